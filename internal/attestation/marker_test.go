package attestation_test

import (
	"bytes"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
)

func TestMarkerExtendsClusterIDIntoPCR15(t *testing.T) {
	tpm := attestationtest.StartSwTPM(t, "")
	m := attestation.NewMarker(tpm.Open)

	marked, err := m.IsBootstrapped()
	if err != nil {
		t.Fatal(err)
	}
	if marked {
		t.Fatal("fresh TPM reports bootstrapped")
	}

	// The cluster ID as the node derives it from what it received.
	secret, salt := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	clusterID, err := masterkey.ClusterID(secret, salt)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.MarkNodeAsBootstrapped(clusterID); err != nil {
		t.Fatalf("MarkNodeAsBootstrapped: %v", err)
	}
	if marked, err = m.IsBootstrapped(); err != nil || !marked {
		t.Fatalf("IsBootstrapped = %v, %v after marking", marked, err)
	}

	tc, err := tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := attestation.ReadPCRs(tc, []uint32{constants.PCRClusterID})
	tc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := attestation.ExpectedPCR15(clusterID); !bytes.Equal(pcrs[constants.PCRClusterID], want) {
		t.Fatalf("PCR 15 = %x, ExpectedPCR15 = %x", pcrs[constants.PCRClusterID], want)
	}

	if err := m.MarkNodeAsBootstrapped(clusterID); err == nil {
		t.Fatal("second MarkNodeAsBootstrapped succeeded; PCR 15 would no longer match ExpectedPCR15")
	}
	if err := m.MarkNodeAsBootstrapped(clusterID[:16]); err == nil {
		t.Fatal("short cluster ID accepted")
	}
}

func TestReadPCRsBeyondEightPerCommand(t *testing.T) {
	tpm := attestationtest.StartSwTPM(t, "")
	want := extend(t, tpm, 14, "x")
	tc, err := tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	pcrs, err := attestation.ReadPCRs(tc, attestation.QuotedPCRs)
	if err != nil {
		t.Fatal(err)
	}
	if len(pcrs) != len(attestation.QuotedPCRs) {
		t.Fatalf("got %d PCRs, want %d", len(pcrs), len(attestation.QuotedPCRs))
	}
	if !bytes.Equal(pcrs[14], want) {
		t.Fatalf("PCR 14 = %x, want %x", pcrs[14], want)
	}
}
