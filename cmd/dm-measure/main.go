// Command dm-measure is the test image's stand-in for systemd-stub: the init
// runs the daemon through it, so that what the daemon is and everything
// that steers it is in the TPM before it runs (docs/pcr-map.md). The image
// build and the test harness use it, and the same Go code
// (internal/measure), to compute the values a genuine boot shows.
//
//	dm-measure boot [-tpm DEV] [-cmdline FILE] -- /bin/disk-mapper FLAG…
//	    measure /init and the daemon into PCR 11, its argv, environment,
//	    the kernel command line (but dm.*), the disk_mapper.* parameters,
//	    /etc/disk-mapper/ and /etc/default/disk-mapper into PCR 12, then
//	    exec it (environment:
//	    measure.DaemonEnv only); exit 125 without running it if any
//	    measurement failed
//	dm-measure actions [-tpm DEV] -- ACTION…
//	    measure the init's test actions into PCR 12 (after the daemon)
//	dm-measure expected -root DIR -cmdline 'KERNEL COMMAND LINE' [-events]
//	    print the measurements JSON ({"11","12","15"}) of a boot of the
//	    image tree DIR with that command line, no TPM; -events prints the
//	    event log instead
//
//	dm-measure stub | boot-config | expected-systemd
//	    the systemd image's modes (systemd.go)
//
// Each measurement is logged as one JSON line on stderr (the init sends it
// to the JSON serial port). It is built static (CGO_ENABLED=0).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/measure"
)

// exitMeasureFailed tells the init that nothing ran: the daemon must not run
// unmeasured, since its PCRs would then lie about it.
const exitMeasureFailed = 125

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(stderr io.Writer) int {
	fmt.Fprintln(stderr, "usage: dm-measure boot [-tpm DEV] [-cmdline FILE] -- PROG ARG… | actions [-tpm DEV] -- ACTION… | expected -root DIR -cmdline 'CMDLINE' [-events] | stub | boot-config -- PROG ARG… | expected-systemd -initrd CPIO -root DIR -cmdline 'CMDLINE' [-listen] (systemd.go)")
	return 2
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return usage(stderr)
	}
	switch args[0] {
	case "boot":
		return boot(args[1:], stderr, syscall.Exec)
	case "actions":
		return actions(args[1:], stderr)
	case "expected":
		return expected(args[1:], stdout, stderr)
	case "stub":
		return stub(args[1:], stderr)
	case "boot-config":
		return bootConfig(args[1:], stderr, syscall.Exec, os.Environ(), os.Getpid())
	case "expected-systemd":
		return expectedSystemd(args[1:], stdout, stderr)
	}
	return usage(stderr)
}

type execFunc func(argv0 string, argv, env []string) error

func boot(args []string, stderr io.Writer, exec execFunc) int {
	fs := flag.NewFlagSet("dm-measure boot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tpmPath := fs.String("tpm", constants.TPMDevice, "TPM device or swtpm unix socket")
	cmdlinePath := fs.String("cmdline", constants.KernelCmdline, "kernel command line file")
	root := fs.String("root", "/", "image root (tests only: the daemon is root+argv[0])")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	argv := fs.Args()
	if len(argv) == 0 {
		return usage(stderr)
	}
	cmdline, err := os.ReadFile(*cmdlinePath)
	if err != nil {
		logFailure(stderr, err)
		return exitMeasureFailed
	}
	b := measure.Boot{Root: *root, Argv: argv, Env: measure.DaemonEnv, Cmdline: string(cmdline)}
	events, err := b.Events()
	if err == nil {
		err = extend(*tpmPath, events, stderr)
	}
	if err != nil {
		logFailure(stderr, err)
		return exitMeasureFailed
	}
	// The same argv and environment that were measured, byte for byte.
	err = exec(filepath.Join(*root, argv[0]), b.Argv, b.Env)
	logLine(stderr, "exec_failed", fmt.Errorf("running %s: %w", argv[0], err))
	return 127
}

func actions(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("dm-measure actions", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tpmPath := fs.String("tpm", constants.TPMDevice, "TPM device or swtpm unix socket")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	e, err := measure.TestActionsEvent(fs.Args())
	if err == nil {
		err = extend(*tpmPath, []measure.Event{e}, stderr)
	}
	if err != nil {
		logFailure(stderr, err)
		return exitMeasureFailed
	}
	return 0
}

func expected(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dm-measure expected", flag.ContinueOnError)
	fs.SetOutput(stderr)
	root := fs.String("root", "", "the image tree (mkinitramfs.sh keeps it beside the cpio)")
	cmdline := fs.String("cmdline", "", "the kernel command line of the boot")
	events := fs.Bool("events", false, "print the event log (one JSON object per event) instead")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *root == "" || fs.NArg() != 0 {
		return usage(stderr)
	}
	evs, err := measure.ExpectedBoot(*root, *cmdline).Events()
	if err != nil {
		fmt.Fprintln(stderr, "dm-measure:", err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	if *events {
		for _, e := range evs {
			if err := enc.Encode(eventLine("expected", e)); err != nil {
				return 1
			}
		}
		return 0
	}
	if err := enc.Encode(measure.Expected(evs)); err != nil {
		fmt.Fprintln(stderr, "dm-measure:", err)
		return 1
	}
	return 0
}

// extend extends every event, in order, logging each; it stops at the
// first failure.
func extend(tpmPath string, events []measure.Event, stderr io.Writer) error {
	t, err := attestation.OpenPath(tpmPath)()
	if err != nil {
		return err
	}
	defer t.Close()
	for _, e := range events {
		if err := attestation.ExtendPCR(t, e.PCR, e.Digest()); err != nil {
			return fmt.Errorf("%s %s: %w", e.Kind, e.Desc, err)
		}
		line, _ := json.Marshal(eventLine("measured", e))
		fmt.Fprintf(stderr, "%s\n", line)
	}
	return nil
}

func eventLine(event string, e measure.Event) map[string]any {
	return map[string]any{"logger": "dm-measure", "event": event, "pcr": e.PCR, "kind": e.Kind,
		"what": e.Desc, "digest": measure.Hex(e.Digest())}
}

func logFailure(stderr io.Writer, err error) { logLine(stderr, "measure_failed", err) }

func logLine(stderr io.Writer, event string, err error) {
	if err == nil {
		err = errors.New("unknown error")
	}
	line, _ := json.Marshal(map[string]any{"logger": "dm-measure", "event": event, "error": err.Error()})
	fmt.Fprintf(stderr, "%s\n", line)
}
