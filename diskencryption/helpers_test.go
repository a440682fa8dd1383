package diskencryption

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/testutil"
)

const testDiskSize = 40 << 20

// newDisk creates a sparse zero file of size bytes under t.TempDir().
func newDisk(t testing.TB, size int64) string {
	t.Helper()
	return testutil.SparseFile(t, "disk.img", size)
}

func randomKey(t testing.TB) []byte {
	t.Helper()
	return testutil.RandomBytes(t, 32)
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

// cliFormat makes a LUKS2 header with the cryptsetup CLI on a fresh disk;
// extra options override the fast PBKDF2 defaults.
func cliFormat(t testing.TB, passphrase []byte, extra ...string) string {
	t.Helper()
	path := newDisk(t, testDiskSize)
	testutil.CLIFormatLUKS2(t, path, passphrase, extra...)
	return path
}

func dumpJSON(t testing.TB, path string) map[string]any {
	t.Helper()
	out := testutil.CryptsetupCLI(t, nil, "luksDump", "--dump-json-metadata", path)
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
