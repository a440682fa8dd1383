package main

import (
	"errors"
	"fmt"

	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationflags"
	"github.com/spf13/afero"
	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
)

// credentialFlags select the JoinService's certificate and how it validates
// nodes. This file is the only place where the service builds transport
// credentials.
type credentialFlags struct {
	cert, key   string // PEM certificate the nodes verify (against the CA in their image) and its key
	attestation attestationflags.Flags
}

// serverCredentials returns aTLS server credentials: the service presents
// its certificate and requires every node to attest.
func serverCredentials(fs afero.Fs, f credentialFlags, log *zap.Logger) (credentials.TransportCredentials, error) {
	if f.cert == "" || f.key == "" {
		return nil, errors.New("--cert and --key are required (create a test pair with `joinservice gen-cert`)")
	}
	cert, err := attestationflags.KeyPair(fs, f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("--cert/--key: %w", err)
	}
	validator, err := f.attestation.Validator(fs, log)
	if err != nil {
		return nil, err
	}
	return atls.NewCredentials(atls.Config{Validator: validator, Certificate: &cert, Log: log}), nil
}
