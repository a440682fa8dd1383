// Package attestationflags is the one place where a command line selects how
// a peer's attestation is validated: the flags `dmctl recover` and the
// JoinService share, and the validator they build from them.
package attestationflags

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/spf13/afero"
	"go.uber.org/zap"
)

// Flags select how nodes are validated.
type Flags struct {
	Measurements           string // expected PCR values of the nodes' image (JSON file)
	AKRoots                string // PEM platform CA(s) that certify nodes' AKs
	AKPins                 string // PEM AK public keys trusted as they are (pins.go)
	TrustAnyAK             bool   // development: accept quotes by any AK
	InsecureDevAttestation bool   // development: accept nodes without a TPM
	// AllowPartialMeasurements (development) accepts a measurements file
	// that leaves some of constants.RequiredPCRs unpinned.
	AllowPartialMeasurements bool
}

// Register adds --measurements, --ak-roots, --insecure-trust-any-ak,
// --insecure-dev-attestation and --allow-partial-measurements to fl.
func (f *Flags) Register(fl *flag.FlagSet) {
	fl.StringVar(&f.Measurements, "measurements", "", "expected PCR values of the nodes' image (JSON)")
	fl.StringVar(&f.AKRoots, "ak-roots", "", "PEM file with the platform CA(s) that certify the nodes' attestation keys")
	fl.StringVar(&f.AKPins, "ak-pins", "", "PEM file with pinned AK public keys (for clouds without AK certificates, e.g. AWS, OpenStack)")
	fl.BoolVar(&f.TrustAnyAK, "insecure-trust-any-ak", false, "DEVELOPMENT ONLY: accept TPM quotes by any attestation key")
	fl.BoolVar(&f.InsecureDevAttestation, "insecure-dev-attestation", false, "DEVELOPMENT ONLY: accept nodes without a TPM")
	fl.BoolVar(&f.AllowPartialMeasurements, "allow-partial-measurements", false,
		fmt.Sprintf("DEVELOPMENT ONLY: accept a --measurements file without all of PCRs %v (unpinned PCRs then accept any value)", constants.RequiredPCRs()))
}

// Validator builds the validator the flags select: the TPM validator with
// the expected measurements (and AK roots), or, only when asked for
// explicitly and alone, the development validator, with a warning.
func (f Flags) Validator(fs afero.Fs, log *zap.Logger) (attestation.Validator, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if f.InsecureDevAttestation {
		if f.Measurements != "" || f.AKRoots != "" || f.AKPins != "" || f.TrustAnyAK {
			return nil, errors.New("--insecure-dev-attestation cannot be combined with --measurements, --ak-roots or --insecure-trust-any-ak")
		}
		log.Warn("Accepting nodes WITHOUT TPM attestation (--insecure-dev-attestation): development only",
			logging.Event("dev_attestation_enabled"))
		return attestation.NewDevValidator(log), nil
	}
	if f.Measurements == "" {
		return nil, errors.New("--measurements is required (or --insecure-dev-attestation for development)")
	}
	measurements, err := attestation.LoadMeasurements(fs, f.Measurements)
	if err != nil {
		return nil, err
	}
	if missing := measurements.Missing(constants.RequiredPCRs()); len(missing) > 0 {
		if !f.AllowPartialMeasurements {
			return nil, fmt.Errorf("--measurements %s does not pin PCRs %v (the image's PCR map needs %v; docs/pcr-map.md): "+
				"a node with any value there would be accepted (--allow-partial-measurements for development)",
				f.Measurements, missing, constants.RequiredPCRs())
		}
		log.Warn("Measurements leave PCRs unpinned: nodes with ANY value there are accepted (--allow-partial-measurements): development only",
			logging.Event("partial_measurements"), zap.String("file", f.Measurements), zap.Any("missing", missing))
	}
	cfg := attestation.ValidatorConfig{Measurements: measurements, TrustAnyAK: f.TrustAnyAK, Log: log}
	if f.AKRoots != "" {
		pem, err := afero.ReadFile(fs, f.AKRoots)
		if err != nil {
			return nil, fmt.Errorf("reading --ak-roots: %w", err)
		}
		cfg.AKRoots = x509.NewCertPool()
		if !cfg.AKRoots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ak-roots %s holds no PEM certificate", f.AKRoots)
		}
	}
	if f.AKPins != "" {
		if cfg.PinnedAKs, err = loadPinnedAKs(fs, f.AKPins); err != nil {
			return nil, err
		}
	}
	return attestation.NewTPMValidator(cfg)
}
