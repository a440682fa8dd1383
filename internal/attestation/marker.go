package attestation

import (
	"crypto/sha256"
	"fmt"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// Marker records in PCR 15 that the node obtained its keys.
type Marker struct {
	open OpenFunc
}

// NewMarker returns a Marker that opens the TPM for each call.
func NewMarker(open func() (transport.TPMCloser, error)) *Marker {
	return &Marker{open: open}
}

// MarkNodeAsBootstrapped extends the 32-byte cluster ID, as the SHA-256 bank
// digest, into PCR 15. It refuses when PCR 15 is already non-zero: a second
// extension would give a value no one expects.
func (m *Marker) MarkNodeAsBootstrapped(clusterID []byte) error {
	if len(clusterID) != sha256.Size {
		return fmt.Errorf("marking node: cluster ID is %d bytes, want %d", len(clusterID), sha256.Size)
	}
	t, err := m.open()
	if err != nil {
		return fmt.Errorf("opening TPM: %w", err)
	}
	defer t.Close()
	marked, err := pcr15Set(t)
	if err != nil {
		return err
	}
	if marked {
		return fmt.Errorf("marking node: PCR %d is already extended", constants.PCRClusterID)
	}
	return ExtendPCR(t, constants.PCRClusterID, clusterID)
}

// IsBootstrapped tells whether PCR 15 is non-zero.
func (m *Marker) IsBootstrapped() (bool, error) {
	t, err := m.open()
	if err != nil {
		return false, fmt.Errorf("opening TPM: %w", err)
	}
	defer t.Close()
	return pcr15Set(t)
}

func pcr15Set(t transport.TPM) (bool, error) {
	v, err := ReadPCRs(t, []uint32{constants.PCRClusterID})
	if err != nil {
		return false, err
	}
	return !isZero(v[constants.PCRClusterID]), nil
}

// ExpectedPCR15 is the value of PCR 15 after MarkNodeAsBootstrapped:
// SHA-256(32 zero bytes || clusterID).
func ExpectedPCR15(clusterID []byte) []byte {
	return ExtendedValue(clusterID)
}
