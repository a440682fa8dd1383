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

// credentialFlags select how dmctl validates a node and which client
// certificate it presents. This file is the only place where dmctl builds
// transport credentials.
type credentialFlags struct {
	attestation attestationflags.Flags
	// clientCert and clientKey: PEM certificate chaining to the cluster CA.
	// A node with a blank disk takes a key only from a peer that presents
	// one (a forged key for a new disk would encrypt its data to an
	// attacker); a node with an existing disk checks the key against the
	// disk instead and needs none.
	clientCert, clientKey string
}

// recoverCredentials returns aTLS client credentials that require every node
// to attest, presenting the operator's client certificate if one is given.
func recoverCredentials(fs afero.Fs, f credentialFlags, log *zap.Logger) (credentials.TransportCredentials, error) {
	if (f.clientCert == "") != (f.clientKey == "") {
		return nil, errors.New("--client-cert and --client-key go together")
	}
	validator, err := f.attestation.Validator(fs, log)
	if err != nil {
		return nil, err
	}
	cfg := atls.Config{Validator: validator, Log: log}
	if f.clientCert != "" {
		cert, err := attestationflags.KeyPair(fs, f.clientCert, f.clientKey)
		if err != nil {
			return nil, fmt.Errorf("--client-cert/--client-key: %w", err)
		}
		cfg.Certificate = &cert
	}
	return atls.NewCredentials(cfg), nil
}
