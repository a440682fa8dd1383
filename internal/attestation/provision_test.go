package attestation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
	"github.com/diskmapper/disk-mapper/internal/testutil"
)

func provision(t *testing.T, tpm *attestationtest.SwTPM, ca *x509.Certificate, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	tc, err := tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	der, err := attestation.Provision(tc, ca, key)
	if err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return der
}

func TestAKCertificateFromNV(t *testing.T) {
	ca, caKey, err := attestation.NewPlatformCA("test platform CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _, err := attestation.NewPlatformCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	tpm := attestationtest.StartSwTPM(t, stateDir)
	der := provision(t, tpm, ca, caKey)
	// Provisioning twice replaces the certificate.
	der = provision(t, tpm, ca, caKey)
	akBefore := testutil.AKPublicKey(t, tpm)

	// Reboot: the AK is a primary derived from the endorsement seed and
	// the certificate is in NV, so both survive while PCRs reset.
	tpm.Stop()
	tpm = attestationtest.StartSwTPM(t, stateDir)
	if !testutil.AKPublicKey(t, tpm).Equal(akBefore) {
		t.Fatal("AK changed across a reboot; its NV certificate would no longer match")
	}

	roots := x509.NewCertPool()
	roots.AddCert(ca)
	iss := newIssuer(t, tpm)
	binding := randomBinding(t)
	doc, err := iss.Issue(context.Background(), binding)
	if err != nil {
		t.Fatal(err)
	}
	if got := decodeB64(t, docField(t, doc, "ak_certificate")); string(got) != string(der) {
		t.Fatal("document does not carry the provisioned AK certificate")
	}
	if err := newValidator(t, attestation.ValidatorConfig{AKRoots: roots}).Validate(context.Background(), doc, binding); err != nil {
		t.Fatalf("Validate with platform CA: %v", err)
	}

	t.Run("certificate from another CA", func(t *testing.T) {
		otherRoots := x509.NewCertPool()
		otherRoots.AddCert(otherCA)
		v := newValidator(t, attestation.ValidatorConfig{AKRoots: otherRoots})
		wantRejected(t, v.Validate(context.Background(), doc, binding), "does not chain to the platform CA")
	})
	t.Run("certificate for another AK", func(t *testing.T) {
		// A genuine certificate of a different TPM, pasted into this
		// TPM's document.
		other := attestationtest.StartSwTPM(t, "")
		otherDER := provision(t, other, ca, caKey)
		forged := mutate(t, doc, func(d map[string]any) { d["ak_certificate"] = otherDER })
		v := newValidator(t, attestation.ValidatorConfig{AKRoots: roots})
		wantRejected(t, v.Validate(context.Background(), forged, binding), "certifies a different key")
	})
	t.Run("no certificate", func(t *testing.T) {
		stripped := mutate(t, doc, func(d map[string]any) { delete(d, "ak_certificate") })
		v := newValidator(t, attestation.ValidatorConfig{AKRoots: roots})
		wantRejected(t, v.Validate(context.Background(), stripped, binding), "no AK certificate")
	})
}

func TestIssuerWithoutNVCertificate(t *testing.T) {
	tpm := attestationtest.StartSwTPM(t, "")
	doc, err := newIssuer(t, tpm).Issue(context.Background(), randomBinding(t))
	if err != nil {
		t.Fatal(err)
	}
	if docField(t, doc, "ak_certificate") != nil {
		t.Fatal("document carries an AK certificate although none was provisioned")
	}
}

func docField(t *testing.T, doc []byte, field string) any {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	return d[field]
}
