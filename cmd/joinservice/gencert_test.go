package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/afero"
)

func TestGenCertIssuesOperatorClientCertificate(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	if code := run(t.Context(), []string{"gen-cert", "--dir", dir}, &out, &errOut, afero.NewOsFs()); code != exitOK {
		t.Fatalf("gen-cert: %d %s", code, errOut.String())
	}
	if info, err := os.Stat(filepath.Join(dir, "operator-key.pem")); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("operator-key.pem: %v %v", info, err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	certPEM, _ := os.ReadFile(filepath.Join(dir, "operator-cert.pem"))
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("operator-cert.pem holds no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("operator certificate is not a client certificate of the CA: %v", err)
	}
}
