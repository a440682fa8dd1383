package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
)

// The harness flow: create a CA, provision the swtpm state dir, "reboot"
// into a new swtpm on the same state, and attest with the NV certificate.
func TestProvisionThenAttestAfterReboot(t *testing.T) {
	dir := t.TempDir()
	state := t.TempDir()
	tpm := attestationtest.StartSwTPM(t, state)
	if err := run([]string{"--new-ca", dir}, &bytes.Buffer{}); err != nil {
		t.Fatalf("--new-ca: %v", err)
	}
	args := []string{"--tpm", tpm.ServerPath,
		"--ca-cert", filepath.Join(dir, "ca.pem"), "--ca-key", filepath.Join(dir, "ca-key.pem"),
		"--out", filepath.Join(dir, "ak.pem"), "--ak-pub-out", filepath.Join(dir, "ak-pub.pem")}
	if err := run(args, &bytes.Buffer{}); err != nil {
		t.Fatalf("provision: %v", err)
	}
	tpm.Stop()
	tpm = attestationtest.StartSwTPM(t, state)

	caDER, err := readPEM(filepath.Join(dir, "ca.pem"), "CERTIFICATE")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	pubDER, err := readPEM(filepath.Join(dir, "ak-pub.pem"), "PUBLIC KEY")
	if err != nil {
		t.Fatal(err)
	}
	pinned, err := x509.ParsePKIXPublicKey(pubDER)
	if err != nil {
		t.Fatal(err)
	}

	iss, err := attestation.NewTPMIssuer(tpm.Open, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	binding := make([]byte, 32)
	_, _ = rand.Read(binding)
	doc, err := iss.Issue(context.Background(), binding)
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]attestation.ValidatorConfig{
		"platform CA": {AKRoots: roots},
		"pinned AK":   {PinnedAKs: []crypto.PublicKey{pinned}},
	} {
		v, err := attestation.NewTPMValidator(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Validate(context.Background(), doc, binding); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	notCA := filepath.Join(dir, "x.pem")
	_ = os.WriteFile(notCA, []byte("garbage"), 0o644)
	for _, args := range [][]string{
		{},
		{"--tpm", "/nonexistent"},
		{"--tpm", "/nonexistent", "--ca-cert", notCA, "--ca-key", notCA},
		{"--new-ca", dir, "--ca-cert", notCA},
		{"stray"},
	} {
		if err := run(args, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}
