package main

// The systemd image's modes (docs/pcr-map.md, "systemd image"):
//
//	dm-measure stub [-tpm DEV] [-root DIR] [-cmdline FILE]
//	    play systemd-stub: the image (the initrd's /etc and /usr as
//	    unpacked) into PCR 11, the whole kernel command line into PCR 12;
//	    an early unit runs it before the daemon's
//	dm-measure boot-config [-tpm DEV] [-cmdline FILE] -- /usr/bin/disk-mapper FLAG…
//	    the daemon unit's ExecStart: measure the argv systemd expanded,
//	    the allow-listed environment (measure.ConfigEnv), the disk_mapper.*
//	    parameters, /etc/disk-mapper/ and /etc/default/disk-mapper into
//	    PCR 12, then exec the daemon with that argv and environment
//	    (LISTEN_* kept for the socket hand-over: the pid does not change)
//	dm-measure expected-systemd -initrd CPIO -root DIR -cmdline 'CMDLINE' [-listen] [-events]
//	    the measurements JSON of a boot of that image with that command line

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/measure"
)

func stub(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("dm-measure stub", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tpmPath := fs.String("tpm", constants.TPMDevice, "TPM device or swtpm unix socket")
	root := fs.String("root", "/", "the image root")
	cmdlinePath := fs.String("cmdline", constants.KernelCmdline, "kernel command line file")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return 2
	}
	cmdline, err := os.ReadFile(*cmdlinePath)
	if err != nil {
		logFailure(stderr, err)
		return exitMeasureFailed
	}
	events, err := measure.StubEvents(*root, string(cmdline))
	if err == nil {
		err = extend(*tpmPath, events, stderr)
	}
	if err != nil {
		logFailure(stderr, err)
		return exitMeasureFailed
	}
	return 0
}

func bootConfig(args []string, stderr io.Writer, exec execFunc, environ []string, pid int) int {
	fs := flag.NewFlagSet("dm-measure boot-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tpmPath := fs.String("tpm", constants.TPMDevice, "TPM device or swtpm unix socket")
	cmdlinePath := fs.String("cmdline", constants.KernelCmdline, "kernel command line file")
	root := fs.String("root", "/", "image root (tests only)")
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
	run, measured := measure.ConfigEnv(environ, pid)
	events, err := measure.ConfigBoot{Root: *root, Argv: argv, Env: measured, Cmdline: string(cmdline)}.Events()
	if err == nil {
		err = extend(*tpmPath, events, stderr)
	}
	if err != nil {
		logFailure(stderr, err)
		return exitMeasureFailed
	}
	err = exec(argv[0], argv, run)
	logLine(stderr, "exec_failed", fmt.Errorf("running %s: %w", argv[0], err))
	return 127
}

func expectedSystemd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dm-measure expected-systemd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	initrd := fs.String("initrd", "", "the image's cpio")
	root := fs.String("root", "", "the tree unpacked from it")
	cmdline := fs.String("cmdline", "", "the kernel command line of the boot")
	listen := fs.Bool("listen", false, "the daemon is socket-activated (key hand-over socket)")
	events := fs.Bool("events", false, "print the event log instead")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *initrd == "" || *root == "" || fs.NArg() != 0 {
		return usage(stderr)
	}
	evs, err := measure.ExpectedSystemdBoot(measure.SystemdImage{Initrd: *initrd, Root: *root}, *cmdline, *listen)
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
		return 1
	}
	return 0
}
