package main

import (
	"crypto/tls"
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

// credentialFlags select the JoinService's certificate and how it validates
// nodes. This file is the only place where the service builds transport
// credentials.
type credentialFlags struct {
	cert, key      string // PEM certificate the nodes verify (against the CA in their image) and its key
	measurements   string // expected PCR values of the nodes' image (JSON)
	akRoots        string // PEM platform CA(s) that certify nodes' AKs
	trustAnyAK     bool   // development: accept quotes by any AK
	insecureDevDoc bool   // development: accept nodes without a TPM
}

// serverCredentials returns aTLS server credentials: the service presents
// its certificate and requires every node to attest.
func serverCredentials(fs afero.Fs, f credentialFlags, log *zap.Logger) (credentials.TransportCredentials, error) {
	if f.cert == "" || f.key == "" {
		return nil, errors.New("--cert and --key are required (create a test pair with `joinservice gen-cert`)")
	}
	certPEM, err := afero.ReadFile(fs, f.cert)
	if err != nil {
		return nil, fmt.Errorf("reading --cert: %w", err)
	}
	keyPEM, err := afero.ReadFile(fs, f.key)
	if err != nil {
		return nil, fmt.Errorf("reading --key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	clear(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading --cert/--key: %w", err)
	}
	validator, err := newValidator(fs, f, log)
	if err != nil {
		return nil, err
	}
	return atls.NewCredentials(atls.Config{Validator: validator, Certificate: &cert, Log: log}), nil
}

func newValidator(fs afero.Fs, f credentialFlags, log *zap.Logger) (attestation.Validator, error) {
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
