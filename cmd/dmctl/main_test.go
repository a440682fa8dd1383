package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
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
	"github.com/diskmapper/disk-mapper/recoveryserver"
	"github.com/spf13/afero"
)

const uuid = "0a1b2c3d-0000-4000-8000-000000000009"

func runDmctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut, afero.NewOsFs())
	return code, out.String(), errOut.String()
}

func newSecretFile(t *testing.T) (string, masterkey.MasterSecret) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret.json")
	if code, _, stderr := runDmctl(t, "master-secret", "new", "--out", path); code != exitOK {
		t.Fatalf("master-secret new: %d %s", code, stderr)
	}
	s, err := masterkey.Load(afero.NewOsFs(), path)
	if err != nil {
		t.Fatal(err)
	}
	return path, s
}

// startNode runs a real RecoveryServer (aTLS, development issuer) whose
// check accepts only the key derived from secret.
func startNode(t *testing.T, secret masterkey.MasterSecret) (addr string, done <-chan error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := secret.DiskKey(uuid)
	ch := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	srv := recoveryserver.New(recoveryserver.Config{DiskUUID: uuid, Listener: lis,
		Credentials: atls.NewCredentials(atls.Config{Issuer: attestation.NewDevIssuer(nil)})})
	go func() {
		ch <- srv.Serve(ctx, func(_ context.Context, k unlock.Key) error {
			if !bytes.Equal(k.DiskKey, want) {
				return unlock.ErrWrongKey
			}
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-ch })
	return lis.Addr().String(), ch
}

func TestRecoverPushesKeyLikeTheSeed(t *testing.T) {
	path, secret := newSecretFile(t)
	addr, _ := startNode(t, secret)
	code, stdout, stderr := runDmctl(t, "recover", "-e", addr, "--master-secret", path, "--insecure-dev-attestation", "--timeout", "30s")
	if code != exitOK {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	if stdout != "Pushed recovery key.\n" {
		t.Errorf("stdout = %q, want the seed's line", stdout)
	}
	if !strings.Contains(stderr, "attestation_dev") && !strings.Contains(stderr, "WITHOUT TPM") {
		t.Errorf("development attestation did not warn:\n%s", stderr)
	}
}

func TestRecoverWrongSecretExitsNonZeroWithPermissionDenied(t *testing.T) {
	_, secret := newSecretFile(t)
	wrongPath, _ := newSecretFile(t)
	addr, _ := startNode(t, secret)
	start := time.Now()
	code, stdout, stderr := runDmctl(t, "recover", "-e", addr, "--master-secret", wrongPath, "--insecure-dev-attestation", "--json", "--timeout", "30s")
	if code != exitFailed {
		t.Fatalf("exit %d, want %d", code, exitFailed)
	}
	if time.Since(start) > 10*time.Second {
		t.Error("a refused key was retried instead of reported")
	}
	var failed bool
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var l progressLine
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("not a JSON line: %q (%v)", line, err)
		}
		if l.Event == "failed" && strings.Contains(l.Error, "PermissionDenied") {
			failed = true
		}
	}
	if !failed {
		t.Errorf("no failed/PermissionDenied line in\n%s\n%s", stdout, stderr)
	}
}

func TestRecoverUsageErrors(t *testing.T) {
	path, _ := newSecretFile(t)
	for name, args := range map[string][]string{
		"no endpoint":    {"recover", "--master-secret", path, "--insecure-dev-attestation"},
		"no secret":      {"recover", "-e", "127.0.0.1", "--insecure-dev-attestation"},
		"no attestation": {"recover", "-e", "127.0.0.1", "--master-secret", path},
		"bad port":       {"recover", "-e", "127.0.0.1:0", "--master-secret", path, "--insecure-dev-attestation"},
		"unknown":        {"frobnicate"},
	} {
		if code, _, _ := runDmctl(t, args...); code != exitUsage {
			t.Errorf("%s: exit %d, want %d", name, code, exitUsage)
		}
	}
}

func TestMasterSecretNewIsPrivateAndNeverOverwrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	if code, _, stderr := runDmctl(t, "master-secret", "new", "--out", path); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", info.Mode().Perm())
	}
	before, _ := os.ReadFile(path)
	if code, _, _ := runDmctl(t, "master-secret", "new", "--out", path); code == exitOK {
		t.Error("overwrote an existing master secret")
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Error("existing master secret changed")
	}
}

func TestMeasurementsAddsPCR15OfTheCluster(t *testing.T) {
	path, secret := newSecretFile(t)
	pcr11 := strings.Repeat("ab", 32)
	image := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(image, []byte(`{"11":"`+pcr11+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runDmctl(t, "measurements", "--image-measurements", image, "--master-secret", path)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatal(err)
	}
	ms, _ := secret.MeasurementSecret()
	salt, _ := secret.MeasurementSalt()
	clusterID, _ := masterkey.ClusterID(ms, salt)
	if want := hex.EncodeToString(attestation.ExtendedValue(clusterID)); got["15"] != want {
		t.Errorf("PCR 15 = %s, want SHA-256(zeros || clusterID) = %s", got["15"], want)
	}
	if got["11"] != pcr11 {
		t.Errorf("PCR 11 = %s, want the image's %s", got["11"], pcr11)
	}
}

// dmctl refuses, before it dials any node, a measurements file that is
// empty or leaves one of the image's PCRs (11, 12, 15) unpinned: it would
// push keys to nodes with any value there. --allow-partial-measurements
// (development) goes on, with a warning.
func TestRecoverRefusesPartialMeasurements(t *testing.T) {
	path, _ := newSecretFile(t)
	dir := t.TempDir()
	v, zero := `"`+strings.Repeat("ab", 32)+`"`, `"`+strings.Repeat("00", 32)+`"`
	partial, empty := filepath.Join(dir, "partial.json"), filepath.Join(dir, "empty.json")
	_ = os.WriteFile(partial, []byte(`{"11":`+v+`,"15":`+zero+`}`), 0o644)
	_ = os.WriteFile(empty, nil, 0o644)
	recoverWith := func(extra ...string) (int, string) {
		args := append([]string{"recover", "-e", "127.0.0.1:1", "--master-secret", path, "--insecure-trust-any-ak", "--timeout", "1s"}, extra...)
		code, _, stderr := runDmctl(t, args...)
		return code, stderr
	}
	if code, stderr := recoverWith("--measurements", partial); code != exitUsage || !strings.Contains(stderr, "does not pin PCRs [12]") {
		t.Errorf("partial: exit %d, want %d and the missing PCR named: %s", code, exitUsage, stderr)
	}
	if code, stderr := recoverWith("--measurements", empty); code != exitUsage || !strings.Contains(stderr, "is empty") {
		t.Errorf("empty: exit %d, want %d and a clear error: %s", code, exitUsage, stderr)
	}
	if code, stderr := recoverWith("--measurements", partial, "--allow-partial-measurements"); code == exitUsage || code == exitOK ||
		!strings.Contains(stderr, `"event":"partial_measurements"`) {
		t.Errorf("partial, allowed: exit %d, want a failed push (nothing listens) after a warning: %s", code, stderr)
	}
}
