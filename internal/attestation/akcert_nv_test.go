package attestation_test

import (
	"context"
	"crypto/x509"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
)

// tpm-provision plays a cloud: the certificate goes to that cloud's
// documented index (Azure's zero-padded, as there), the issuer told that
// index sends it, and a validator trusting the platform CA accepts the quote.
func TestAKCertificateAtCloudIndex(t *testing.T) {
	ca, caKey, err := attestation.NewPlatformCA("test cloud CA")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for name, tc := range map[string]struct {
		idx tpm2.TPMHandle
		pad int
	}{
		"azure (padded)": {attestation.AzureAKCertNVIndex, 2048}, // swtpm's NV index maximum; Azure uses 4096
		"gcp ecc":        {attestation.GCPAKCertNVIndexECC, 0},
	} {
		t.Run(name, func(t *testing.T) {
			tpm := attestationtest.StartSwTPM(t, "")
			tc2, err := tpm.Open()
			if err != nil {
				t.Fatal(err)
			}
			der, err := attestation.ProvisionAt(tc2, ca, caKey, tc.idx, tc.pad)
			if err != nil {
				t.Fatalf("ProvisionAt: %v", err)
			}
			got, err := attestation.ReadAKCertificateAt(tc2, tc.idx)
			if err != nil || string(got) != string(der) {
				t.Fatalf("read back %d bytes (%v), wrote %d", len(got), err, len(der))
			}
			// Nothing left at our own index: the issuer really reads the cloud's.
			if own, err := attestation.ReadAKCertificateAt(tc2, attestation.AKCertNVIndex); own != nil || err != nil {
				t.Fatalf("own index still holds %d bytes (%v)", len(own), err)
			}
			tc2.Close()

			iss, err := attestation.NewTPMIssuerAt(tpm.Open, zap.NewNop(), tc.idx)
			if err != nil {
				t.Fatal(err)
			}
			b := randomBinding(t)
			doc, err := iss.Issue(context.Background(), b)
			if err != nil {
				t.Fatal(err)
			}
			if err := newValidator(t, attestation.ValidatorConfig{AKRoots: roots}).Validate(context.Background(), doc, b); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			// The default index sees no certificate: a validator without a
			// pinned AK refuses, so the index really matters.
			plain := newIssuer(t, tpm)
			doc, err = plain.Issue(context.Background(), b)
			if err != nil {
				t.Fatal(err)
			}
			if err := newValidator(t, attestation.ValidatorConfig{AKRoots: roots}).Validate(context.Background(), doc, b); err == nil {
				t.Fatal("a document without the certificate validated")
			}
		})
	}
}

func TestReadAKCertificateAtRefusesJunk(t *testing.T) {
	tpm := attestationtest.StartSwTPM(t, "")
	tc, err := tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if got, err := attestation.ReadAKCertificateAt(tc, attestation.AzureAKCertNVIndex); got != nil || err != nil {
		t.Fatalf("undefined index: %v, %v", got, err)
	}
	ca, caKey, _ := attestation.NewPlatformCA("ca")
	der, err := attestation.ProvisionAt(tc, ca, caKey, attestation.AzureAKCertNVIndex, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Padded with one zero byte more than the certificate: still read.
	der2, err := attestation.ProvisionAt(tc, ca, caKey, attestation.AzureAKCertNVIndex, len(der)+8)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := attestation.ReadAKCertificateAt(tc, attestation.AzureAKCertNVIndex); err != nil || string(got) != string(der2) {
		t.Fatalf("zero padding: %d bytes, %v", len(got), err)
	}
}
