package vmtest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/diskmapper/disk-mapper/internal/prereq"
)

// testNVIndex is an owner-defined NV index in the range TCG leaves to owners.
const testNVIndex = tpm2.TPMHandle(0x01c10190)

func requireSwtpm(t *testing.T) {
	t.Helper()
	prereq.NeedTool(t, "swtpm", "swtpm")
}

// nvDefineWrite is the kind of thing a provisioning hook does (the cloud
// puts an AK certificate into NV): define an index and write data to it.
func nvDefineWrite(ctx context.Context, socket string, data []byte) error {
	tpm, err := linuxudstpm.Open(socket)
	if err != nil {
		return err
	}
	defer tpm.Close()
	pub := tpm2.TPMSNVPublic{
		NVIndex: testNVIndex, NameAlg: tpm2.TPMAlgSHA256, DataSize: uint16(len(data)),
		Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, AuthRead: true, NoDA: true, NT: tpm2.TPMNTOrdinary},
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(pub)}).Execute(tpm); err != nil {
		return err
	}
	name, err := tpm2.NVName(&pub)
	if err != nil {
		return err
	}
	_, err = tpm2.NVWrite{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: testNVIndex, Name: *name},
		Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data},
	}.Execute(tpm)
	return err
}

// nvRead reads the test index back through a fresh host-mode swtpm.
func nvRead(ctx context.Context, t *testing.T, stateDir string) ([]byte, error) {
	var got []byte
	err := ProvisionTPM(ctx, t, stateDir, func(ctx context.Context, socket string) error {
		tpm, err := linuxudstpm.Open(socket)
		if err != nil {
			return err
		}
		defer tpm.Close()
		pub, err := tpm2.NVReadPublic{NVIndex: testNVIndex}.Execute(tpm)
		if err != nil {
			return err
		}
		contents, err := pub.NVPublic.Contents()
		if err != nil {
			return err
		}
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: testNVIndex, Name: pub.NVName},
			Size:       contents.DataSize,
		}.Execute(tpm)
		if err != nil {
			return err
		}
		got = rsp.Data.Buffer
		return nil
	})
	return got, err
}

func TestProvisionTPMPersistsNV(t *testing.T) {
	requireSwtpm(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stateDir := filepath.Join(t.TempDir(), "tpm")
	want := []byte("ak-certificate-stand-in")

	if err := ProvisionTPM(ctx, t, stateDir, func(ctx context.Context, socket string) error {
		return nvDefineWrite(ctx, socket, want)
	}); err != nil {
		t.Fatalf("provision: %v", err)
	}
	got, err := nvRead(ctx, t, stateDir)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("NV after a swtpm restart = %q, want %q", got, want)
	}
}

func TestProvisionTPMReportsHookError(t *testing.T) {
	requireSwtpm(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hookErr := errors.New("hook failed")
	err := ProvisionTPM(ctx, t, t.TempDir(), func(context.Context, string) error { return hookErr })
	if !errors.Is(err, hookErr) {
		t.Fatalf("ProvisionTPM = %v, want the hook's error", err)
	}
}

func TestProvisionCommandSubstitutesSocket(t *testing.T) {
	requireSwtpm(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "args")
	// The command sees the socket both as {tpm} and in VMTEST_TPM_SOCKET,
	// and the socket is live (test -S).
	script := `test -S "$1" && test "$1" = "$VMTEST_TPM_SOCKET" && echo "$1" > "$2"`
	err := ProvisionTPM(ctx, t, t.TempDir(), ProvisionCommand(t, "sh", "-c", script, "sh", "{tpm}", out))
	if err != nil {
		t.Fatalf("ProvisionTPM: %v", err)
	}
	if b, err := os.ReadFile(out); err != nil || len(bytes.TrimSpace(b)) == 0 || bytes.Contains(b, []byte("{tpm}")) {
		t.Fatalf("command saw %q (%v), want the socket path", b, err)
	}

	failing := ProvisionCommand(t, "false")
	if err := ProvisionTPM(ctx, t, t.TempDir(), failing); err == nil {
		t.Fatal("ProvisionTPM with a failing command returned nil")
	}
}
