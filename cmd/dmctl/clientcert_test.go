package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/joinservice"
	"github.com/diskmapper/disk-mapper/recoveryserver"
)

// operatorPKI writes a test CA's operator certificate and key (as
// `joinservice gen-cert` issues them) and returns their paths and the CA.
func operatorPKI(t *testing.T) (certPath, keyPath string, ca *x509.CertPool) {
	t.Helper()
	certs, err := joinservice.GenerateTestCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "operator-cert.pem"), filepath.Join(dir, "operator-key.pem")
	if err := os.WriteFile(certPath, certs.OperatorCertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, certs.OperatorKeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ca = x509.NewCertPool()
	if !ca.AppendCertsFromPEM(certs.CAPEM) {
		t.Fatal("CA PEM")
	}
	return certPath, keyPath, ca
}

// startBlankDiskNode runs a real RecoveryServer as a node with a blank disk
// runs it: aTLS as issuer, and RootCAs = the cluster CA, so only a client
// presenting a certificate of that CA gets through the handshake. Its check
// records the key it was handed.
func startBlankDiskNode(t *testing.T, secret masterkey.MasterSecret, ca *x509.CertPool) (addr string, got <-chan unlock.Key) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := secret.DiskKey(uuid)
	keys := make(chan unlock.Key, 1)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	srv := recoveryserver.New(recoveryserver.Config{DiskUUID: uuid, Listener: lis,
		Credentials: atls.NewCredentials(atls.Config{Issuer: attestation.NewDevIssuer(nil), RootCAs: ca})})
	go func() {
		done <- srv.Serve(ctx, func(_ context.Context, k unlock.Key) error {
			if !bytes.Equal(k.DiskKey, want) {
				return unlock.ErrWrongKey
			}
			keys <- unlock.Key{DiskKey: bytes.Clone(k.DiskKey), MeasurementSecret: bytes.Clone(k.MeasurementSecret), MeasurementSalt: bytes.Clone(k.MeasurementSalt)}
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return lis.Addr().String(), keys
}

func TestRecoverBlankDiskNodeRequiresClientCertificate(t *testing.T) {
	secretPath, secret := newSecretFile(t)
	certPath, keyPath, ca := operatorPKI(t)
	addr, got := startBlankDiskNode(t, secret, ca)
	base := []string{"recover", "-e", addr, "--master-secret", secretPath, "--insecure-dev-attestation", "--timeout", "20s"}

	// Without a client certificate the node refuses the handshake; dmctl
	// reports it at once instead of retrying until the timeout.
	start := time.Now()
	code, _, stderr := runDmctl(t, base...)
	if code != exitFailed {
		t.Fatalf("without --client-cert: exit %d, want %d\n%s", code, exitFailed, stderr)
	}
	if !strings.Contains(stderr, "handshake") {
		t.Errorf("without --client-cert: no handshake failure reported:\n%s", stderr)
	}
	if time.Since(start) > 10*time.Second {
		t.Error("a refused handshake was retried until the timeout")
	}

	// A certificate of another CA is refused too.
	otherCert, otherKey, _ := operatorPKI(t)
	if code, _, stderr := runDmctl(t, append(base, "--client-cert", otherCert, "--client-key", otherKey)...); code != exitFailed {
		t.Fatalf("certificate of another CA: exit %d, want %d\n%s", code, exitFailed, stderr)
	}

	// With the cluster CA's operator certificate the key gets through, with
	// the measurement salt the blank disk records (field 3).
	code, stdout, stderr := runDmctl(t, append(base, "--client-cert", certPath, "--client-key", keyPath)...)
	if code != exitOK || stdout != "Pushed recovery key.\n" {
		t.Fatalf("with --client-cert: exit %d, stdout %q\n%s", code, stdout, stderr)
	}
	select {
	case k := <-got:
		wantSalt, _ := secret.MeasurementSalt()
		wantMS, _ := secret.MeasurementSecret()
		if !bytes.Equal(k.MeasurementSalt, wantSalt) || !bytes.Equal(k.MeasurementSecret, wantMS) {
			t.Error("the node did not receive the cluster's measurement secret and salt")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the node's check never saw the key")
	}
}

func TestRecoverClientCertFlagErrors(t *testing.T) {
	secretPath, _ := newSecretFile(t)
	certPath, keyPath, _ := operatorPKI(t)
	base := []string{"recover", "-e", "127.0.0.1", "--master-secret", secretPath, "--insecure-dev-attestation"}
	for name, extra := range map[string][]string{
		"cert without key": {"--client-cert", certPath},
		"key without cert": {"--client-key", keyPath},
		"key is not a key": {"--client-cert", certPath, "--client-key", certPath},
		"missing file":     {"--client-cert", certPath + ".nope", "--client-key", keyPath},
	} {
		if code, _, _ := runDmctl(t, append(base, extra...)...); code != exitUsage {
			t.Errorf("%s: exit %d, want %d", name, code, exitUsage)
		}
	}
}
