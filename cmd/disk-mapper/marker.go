package main

import (
	"os"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/setup"
	"go.uber.org/zap"
)

func newMarker(o options, openTPM attestation.OpenFunc, log *zap.Logger) setup.PCRMarker {
	if _, err := os.Stat(o.tpmDevice); err != nil && o.attestation == attestationDev {
		return devMarker{log: log}
	}
	return attestation.NewMarker(openTPM)
}

// devMarker stands in for the TPM on development machines without one
// (--attestation=dev-insecure only); it warns on every use.
type devMarker struct{ log *zap.Logger }

func (d devMarker) MarkNodeAsBootstrapped([]byte) error {
	d.log.Warn("No TPM: node NOT marked in PCR 15 (development only)")
	return nil
}

func (d devMarker) IsBootstrapped() (bool, error) { return false, nil }
