package diskencryption

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

const testDiskSize = 40 << 20

// newDisk creates a sparse zero file of size bytes under t.TempDir().
func newDisk(t testing.TB, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

func randomKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// formatOurs formats a fresh disk with Format and returns it opened.
func formatOurs(t testing.TB) (*Device, []byte) {
	t.Helper()
	key := randomKey(t)
	d, err := Format(newDisk(t, testDiskSize), FormatOptions{}, key)
	if err != nil {
		t.Fatalf("Format: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d, key
}

// cryptsetupCLI runs the cryptsetup binary (cryptsetup-bin) with stdin.
func cryptsetupCLI(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("cryptsetup")
	if err != nil {
		t.Skip("cryptsetup CLI not installed (Debian package cryptsetup-bin)")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cryptsetup %v: %v\n%s", args, err, out)
	}
	return out
}

// cliFormat makes a LUKS2 (or LUKS1) header with the cryptsetup CLI; extra
// options come after the fast PBKDF2 defaults so they can override them.
func cliFormat(t testing.TB, passphrase []byte, extra ...string) string {
	t.Helper()
	path := newDisk(t, testDiskSize)
	args := []string{"luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--sector-size", "4096", "--key-file", "-"}
	args = append(append(args, extra...), path)
	cryptsetupCLI(t, passphrase, args...)
	return path
}

func dumpJSON(t testing.TB, path string) map[string]any {
	t.Helper()
	out := cryptsetupCLI(t, nil, "luksDump", "--dump-json-metadata", path)
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("luksDump JSON: %v\n%s", err, out)
	}
	return m
}

func fileHash(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func writeAt(t testing.TB, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}
