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
