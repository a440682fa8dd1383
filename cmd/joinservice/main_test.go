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

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/joinproto"
	"github.com/spf13/afero"
	"google.golang.org/grpc"
)

func TestGenCertThenServeTicketToANodeThatTrustsTheCA(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	fs := afero.NewOsFs()
	if code := run(t.Context(), []string{"gen-cert", "--dir", dir, "--hosts", "127.0.0.1"}, &out, &errOut, fs); code != exitOK {
		t.Fatalf("gen-cert: %d %s", code, errOut.String())
	}
	if info, err := os.Stat(filepath.Join(dir, "key.pem")); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v %v", info, err)
	}
	if code := run(t.Context(), []string{"gen-cert", "--dir", dir}, &out, &errOut, fs); code == exitOK {
		t.Error("gen-cert overwrote existing files")
	}
	secret, _ := masterkey.New()
	secretPath := filepath.Join(dir, "secret.json")
	if err := secret.Save(fs, secretPath); err != nil {
		t.Fatal(err)
	}

	// Serve on a port of our choosing via a dry listen: pick a free one.
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var logs bytes.Buffer
	go func() {
		done <- run(ctx, []string{"--listen", addr, "--master-secret", secretPath, "--cert", filepath.Join(dir, "cert.pem"),
			"--key", filepath.Join(dir, "key.pem"), "--insecure-dev-attestation", "--max-concurrent", "2"}, &out, &logs, fs)
	}()
	defer func() {
		cancel()
		if code := <-done; code != exitOK {
			t.Errorf("serve exit %d: %s", code, logs.String())
		}
	}()

	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	nodeCreds := atls.NewCredentials(atls.Config{Issuer: attestation.NewDevIssuer(nil), RootCAs: roots})
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(nodeCreds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	uuid := "0a1b2c3d-0000-4000-8000-000000000001"
	resp, err := joinproto.NewAPIClient(conn).IssueRejoinTicket(t.Context(), &joinproto.IssueRejoinTicketRequest{DiskUuid: uuid}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("%v\nlogs:\n%s", err, logs.String())
	}
	want, _ := secret.DiskKey(uuid)
	if !bytes.Equal(resp.StateDiskKey, want) {
		t.Error("ticket key is not the derived disk key")
	}
	if !strings.Contains(logs.String(), `"event":"rejoin_ticket_issued"`) {
		t.Errorf("no issued line in logs:\n%s", logs.String())
	}
}

func TestServeRefusesMissingCredentials(t *testing.T) {
	dir := t.TempDir()
	secret, _ := masterkey.New()
	secretPath := filepath.Join(dir, "secret.json")
	_ = secret.Save(afero.NewOsFs(), secretPath)
	var out, errOut bytes.Buffer
	if code := run(t.Context(), []string{"--master-secret", secretPath, "--insecure-dev-attestation"}, &out, &errOut, afero.NewOsFs()); code != exitUsage {
		t.Errorf("serve without --cert: exit %d, want %d", code, exitUsage)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// The service refuses, at startup, a measurements file that is empty or
// leaves one of the image's PCRs (11, 12, 15) unpinned: it would hand keys
// to nodes with any value there. --allow-partial-measurements (development)
// lets it start, with a warning.
func TestServeRefusesPartialMeasurements(t *testing.T) {
	dir := t.TempDir()
	fs := afero.NewOsFs()
	var out, errOut bytes.Buffer
	if code := run(t.Context(), []string{"gen-cert", "--dir", dir, "--hosts", "127.0.0.1"}, &out, &errOut, fs); code != exitOK {
		t.Fatalf("gen-cert: %d %s", code, errOut.String())
	}
	secret, _ := masterkey.New()
	secretPath := filepath.Join(dir, "secret.json")
	_ = secret.Save(fs, secretPath)
	v, zero := `"`+strings.Repeat("ab", 32)+`"`, `"`+strings.Repeat("00", 32)+`"`
	partial, empty := filepath.Join(dir, "partial.json"), filepath.Join(dir, "empty.json")
	_ = os.WriteFile(partial, []byte(`{"11":`+v+`,"15":`+zero+`}`), 0o644)
	_ = os.WriteFile(empty, nil, 0o644)

	serve := func(extra ...string) (int, string) {
		var logs bytes.Buffer
		// An address no one can listen on: the run stops right after the
		// credentials, which is all this test is about.
		args := append([]string{"--listen", "127.0.0.1:99999", "--master-secret", secretPath, "--cert", filepath.Join(dir, "cert.pem"),
			"--key", filepath.Join(dir, "key.pem"), "--insecure-trust-any-ak"}, extra...)
		return run(t.Context(), args, &bytes.Buffer{}, &logs, fs), logs.String()
	}
	if code, logs := serve("--measurements", partial); code != exitUsage || !strings.Contains(logs, "does not pin PCRs [12]") {
		t.Errorf("partial: exit %d, want %d and the missing PCR named:\n%s", code, exitUsage, logs)
	}
	if code, logs := serve("--measurements", empty); code != exitUsage || !strings.Contains(logs, "is empty") {
		t.Errorf("empty: exit %d, want %d and a clear error:\n%s", code, exitUsage, logs)
	}
	code, logs := serve("--measurements", partial, "--allow-partial-measurements")
	if code != exitFailed || !strings.Contains(logs, `"event":"partial_measurements"`) || !strings.Contains(logs, `"event":"listen_failed"`) {
		t.Errorf("partial, allowed: exit %d, want it past the credentials (listen fails) with a warning:\n%s", code, logs)
	}
}
