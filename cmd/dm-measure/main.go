// Command dm-measure measures files into a TPM PCR before the test image's
// init runs them, and computes the PCR value that results, so the image build
// can emit the expected measurements.
//
//	dm-measure -pcr 11 FILE…                  extend SHA-256(FILE) into PCR 11, file by file
//	dm-measure -expected -pcr 11 FILE…        print the resulting PCR 11 value (hex), no TPM
//	dm-measure -expected -json -pcr 11 FILE…  print {"11":"…","15":"00…"} (measurements.json)
//
// Each file's SHA-256 is extended as the SHA-256 bank digest, so a PCR that
// starts at zero ends at SHA-256(…SHA-256(0^32 || h1)… || hn). It is built
// static (CGO_ENABLED=0) for the initramfs.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/constants"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "dm-measure:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("dm-measure", flag.ContinueOnError)
	pcr := fs.Uint("pcr", constants.PCRImage, "PCR (SHA-256 bank) to extend")
	tpmPath := fs.String("tpm", constants.TPMDevice, "TPM device or swtpm unix socket")
	expected := fs.Bool("expected", false, "print the PCR value the files give, without a TPM")
	asJSON := fs.Bool("json", false, "with -expected: print a measurements JSON object (PCR 15 expected zero)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	files := fs.Args()
	if len(files) == 0 {
		return fmt.Errorf("no files to measure")
	}
	if *pcr > 23 {
		return fmt.Errorf("PCR %d does not exist", *pcr)
	}
	digests := make([][]byte, len(files))
	for i, f := range files {
		d, err := fileDigest(f)
		if err != nil {
			return err
		}
		digests[i] = d
	}

	if *expected {
		value := attestation.ExtendedValue(digests...)
		if !*asJSON {
			_, err := fmt.Fprintln(stdout, hex.EncodeToString(value))
			return err
		}
		m := attestation.Measurements{uint32(*pcr): value}
		if *pcr != constants.PCRClusterID {
			m[constants.PCRClusterID] = make([]byte, sha256.Size)
		}
		return json.NewEncoder(stdout).Encode(m)
	}

	t, err := attestation.OpenPath(*tpmPath)()
	if err != nil {
		return err
	}
	defer t.Close()
	for i, d := range digests {
		if err := attestation.ExtendPCR(t, uint32(*pcr), d); err != nil {
			return fmt.Errorf("%s: %w", files[i], err)
		}
		fmt.Fprintf(os.Stderr, "dm-measure: extended PCR %d with sha256 %x of %s\n", *pcr, d, files[i])
	}
	return nil
}

func fileDigest(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return h.Sum(nil), nil
}
