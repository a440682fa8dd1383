package main

import (
	"flag"
	"fmt"

	"github.com/diskmapper/disk-mapper/internal/masterkey"
)

// masterSecretNewCmd writes a fresh master secret; masterkey.Save refuses
// to overwrite a file and creates it with mode 0600.
func (e env) masterSecretNewCmd(args []string) int {
	fl := flag.NewFlagSet("dmctl master-secret new", flag.ContinueOnError)
	fl.SetOutput(e.stderr)
	out := fl.String("out", "", "file to write the master secret to (must not exist)")
	if err := fl.Parse(args); err != nil {
		return exitUsage
	}
	if *out == "" || fl.NArg() != 0 {
		fmt.Fprintln(e.stderr, "usage: dmctl master-secret new --out FILE")
		return exitUsage
	}
	secret, err := masterkey.New()
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl: creating master secret: %v\n", err)
		return exitFailed
	}
	defer func() { clear(secret.Key); clear(secret.Salt) }()
	if err := secret.Save(e.fs, *out); err != nil {
		fmt.Fprintf(e.stderr, "dmctl: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(e.stdout, "Wrote master secret to %s (mode 0600). Keep it safe: it recovers every node of the cluster.\n", *out)
	return exitOK
}
