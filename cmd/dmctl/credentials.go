package main

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/spf13/afero"
	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
)

// attestationFlags select how dmctl validates a node. This file is the only
// place where dmctl builds transport credentials.
type attestationFlags struct {
	measurements   string // expected PCR values of the image (JSON)
	akRoots        string // PEM platform CA(s) that certify nodes' AKs
	trustAnyAK     bool   // development: accept quotes by any AK
	insecureDevDoc bool   // development: accept nodes without a TPM
}

// recoverCredentials returns aTLS client credentials that require every node
// to attest. dmctl presents no certificate of its own: the key it sends is
// what proves the operator.
func recoverCredentials(fs afero.Fs, f attestationFlags, log *zap.Logger) (credentials.TransportCredentials, error) {
	validator, err := newValidator(fs, f, log)
	if err != nil {
		return nil, err
	}
	return atls.NewCredentials(atls.Config{Validator: validator, Log: log}), nil
}

func newValidator(fs afero.Fs, f attestationFlags, log *zap.Logger) (attestation.Validator, error) {
	if f.insecureDevDoc {
		if f.measurements != "" || f.akRoots != "" || f.trustAnyAK {
			return nil, errors.New("--insecure-dev-attestation cannot be combined with --measurements, --ak-roots or --insecure-trust-any-ak")
		}
		log.Warn("Accepting nodes WITHOUT TPM attestation (--insecure-dev-attestation): development only",
			logging.Event("dev_attestation_enabled"))
		return attestation.NewDevValidator(log), nil
	}
	if f.measurements == "" {
		return nil, errors.New("--measurements is required (or --insecure-dev-attestation for development)")
	}
	measurements, err := attestation.LoadMeasurements(fs, f.measurements)
	if err != nil {
		return nil, err
	}
	cfg := attestation.ValidatorConfig{Measurements: measurements, TrustAnyAK: f.trustAnyAK, Log: log}
	if f.akRoots != "" {
		pem, err := afero.ReadFile(fs, f.akRoots)
		if err != nil {
			return nil, fmt.Errorf("reading --ak-roots: %w", err)
		}
		cfg.AKRoots = x509.NewCertPool()
		if !cfg.AKRoots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ak-roots %s holds no PEM certificate", f.akRoots)
		}
	}
	return attestation.NewTPMValidator(cfg)
}
