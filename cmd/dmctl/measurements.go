package main

import (
	"encoding/json"
	"flag"
	"fmt"

	"github.com/diskmapper/disk-mapper/dmctl"
	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
)

// measurementsCmd prints the image's measurements plus the PCR 15 value a
// node of this cluster shows after it marked itself, as measurements JSON.
func (e env) measurementsCmd(args []string) int {
	fl := flag.NewFlagSet("dmctl measurements", flag.ContinueOnError)
	fl.SetOutput(e.stderr)
	imagePath := fl.String("image-measurements", "", "measurements JSON the image build emitted")
	secretPath := fl.String("master-secret", "", "the cluster's master-secret file")
	if err := fl.Parse(args); err != nil {
		return exitUsage
	}
	if *imagePath == "" || *secretPath == "" || fl.NArg() != 0 {
		fmt.Fprintln(e.stderr, "usage: dmctl measurements --image-measurements FILE --master-secret FILE")
		return exitUsage
	}
	image, err := attestation.LoadMeasurements(e.fs, *imagePath)
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl: %v\n", err)
		return exitUsage
	}
	secret, err := masterkey.Load(e.fs, *secretPath)
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl: %v\n", err)
		return exitUsage
	}
	defer func() { clear(secret.Key); clear(secret.Salt) }()
	expected, err := dmctl.ExpectedMeasurements(image, secret)
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl: %v\n", err)
		return exitFailed
	}
	out, err := json.MarshalIndent(expected, "", "  ")
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl: %v\n", err)
		return exitFailed
	}
	fmt.Fprintln(e.stdout, string(out))
	return exitOK
}
