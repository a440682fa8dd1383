package testutil

import (
	"crypto/ecdsa"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
)

// AKPublicKey returns the attestation key of a running swtpm, the key a
// validator pins to trust that TPM's quotes.
func AKPublicKey(tb testing.TB, tpm *attestationtest.SwTPM) *ecdsa.PublicKey {
	tb.Helper()
	tc, err := tpm.Open()
	if err != nil {
		tb.Fatal(err)
	}
	defer tc.Close()
	ak, err := attestation.AKPublicKey(tc)
	if err != nil {
		tb.Fatal(err)
	}
	return ak
}
