// Command dmctl is the operator CLI of disk-mapper:
//
//	dmctl recover -e HOST[:PORT] [-e …] --master-secret FILE --measurements FILE [--client-cert FILE --client-key FILE] [--timeout 5m] [--json]
//	dmctl status -e HOST[:PORT] [-e …] --measurements FILE [--client-cert FILE --client-key FILE] [--timeout 30s] [--json]
//	dmctl master-secret new --out FILE
//	dmctl measurements --image-measurements FILE --master-secret FILE
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/afero"
)

// Exit codes (docs/operations.md, "dmctl exit codes").
const (
	// exitOK: everything asked was done; for recover, every node is
	// unlocked (pushed now, or already unlocked with the same key).
	exitOK = 0
	// exitFailed: the command ran, and something it was asked to do failed;
	// for recover and status, at least one node answered and refused (a key
	// that does not open its disk, a refused state disk, failed attestation).
	exitFailed = 1
	// exitUsage: bad flags or input; nothing was sent.
	exitUsage = 2
	// exitUnreachable: no node refused, but at least one never answered
	// before --timeout.
	exitUnreachable = 3
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, afero.NewOsFs()))
}

// env is what a subcommand may touch, so tests can run it in-process.
type env struct {
	stdout, stderr io.Writer
	fs             afero.Fs
}

func run(args []string, stdout, stderr io.Writer, fs afero.Fs) int {
	e := env{stdout: stdout, stderr: stderr, fs: fs}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "recover":
		return e.recoverCmd(args[1:])
	case "status":
		return e.statusCmd(args[1:])
	case "master-secret":
		if len(args) < 2 || args[1] != "new" {
			fmt.Fprintln(stderr, "usage: dmctl master-secret new --out FILE")
			return exitUsage
		}
		return e.masterSecretNewCmd(args[2:])
	case "measurements":
		return e.measurementsCmd(args[1:])
	case "help", "-h", "--help":
		usage(stdout)
		return exitOK
	default:
		fmt.Fprintf(stderr, "dmctl: unknown command %q\n", args[0])
		usage(stderr)
		return exitUsage
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `dmctl: operator CLI of disk-mapper

  dmctl recover -e HOST[:PORT] [-e ...] --master-secret FILE --measurements FILE [--ak-roots FILE]
                [--client-cert FILE --client-key FILE] [--timeout 5m] [--json]
      push each waiting node the key of its state disk (all nodes at once); a node whose image
      carries a cluster CA requires a client certificate of it (joinservice gen-cert issues a test one);
      a node already unlocked with the same key counts as unlocked
      exit codes: 0 every node unlocked, 1 some node refused (wrong key, refused disk, attestation),
                  3 some node unreachable until --timeout (none refused), 2 usage error
  dmctl status -e HOST[:PORT] [-e ...] --measurements FILE [--ak-roots FILE]
               [--client-cert FILE --client-key FILE] [--timeout 30s] [--json]
      ask each node what it is doing: waiting for its key (since when, rejoin attempts, last error
      per JoinService endpoint, next retry), state disk refused (reason), waiting for a disk, unlocked;
      no key is sent; exit codes as for recover
  dmctl master-secret new --out FILE
      create a cluster master secret (mode 0600, never overwrites)
  dmctl measurements --image-measurements FILE --master-secret FILE
      print the PCR values a node of this cluster shows once it has its keys

Run "dmctl COMMAND -h" for the flags of a command.
`)
}
