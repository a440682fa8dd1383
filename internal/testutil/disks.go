package testutil

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/prereq"
)

// SparseFile creates a sparse zero file of size bytes named name in a fresh
// temporary directory of tb: a test disk that costs no space until written.
func SparseFile(tb testing.TB, name string, size int64) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), name)
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	return path
}

// WriteAt writes data at offset off of the existing file path.
func WriteAt(tb testing.TB, path string, off int64, data []byte) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		tb.Fatal(err)
	}
}

// CryptsetupCLI runs the cryptsetup binary with stdin and returns its
// combined output; a failure fails the test. The test is skipped when the
// binary is not installed (fails under CI, see NeedTool).
func CryptsetupCLI(tb testing.TB, stdin []byte, args ...string) []byte {
	tb.Helper()
	bin := prereq.NeedTool(tb, "cryptsetup", "cryptsetup-bin")
	cmd := exec.Command(bin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("cryptsetup %v: %v\n%s", args, err, out)
	}
	return out
}

// CLIFormatLUKS2 makes a LUKS2 header on path with the cryptsetup CLI, the
// way an administrator would, with passphrase as its one key. The fast
// PBKDF2 defaults come first so that extra options can override them.
func CLIFormatLUKS2(tb testing.TB, path string, passphrase []byte, extra ...string) {
	tb.Helper()
	args := []string{"luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--sector-size", "4096", "--key-file", "-"}
	args = append(append(args, extra...), path)
	CryptsetupCLI(tb, passphrase, args...)
}

// LUKS2HeaderSize reads hdr_size from the primary LUKS2 binary header: the
// size of one header copy, and the offset of the secondary one.
func LUKS2HeaderSize(tb testing.TB, path string) int64 {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	bin := make([]byte, 16)
	if _, err := io.ReadFull(f, bin); err != nil {
		tb.Fatal(err)
	}
	return int64(binary.BigEndian.Uint64(bin[8:16]))
}

// RewriteLUKS2HeaderJSON edits the JSON area of both LUKS2 header copies
// and recomputes their checksums, as an attacker with write access to the
// disk would: the JSON area is not authenticated, only checksummed.
func RewriteLUKS2HeaderJSON(tb testing.TB, path string, edit func(map[string]any)) {
	tb.Helper()
	hdrSize := LUKS2HeaderSize(tb, path)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	for _, off := range []int64{0, hdrSize} {
		hdr := make([]byte, hdrSize)
		if _, err := f.ReadAt(hdr, off); err != nil {
			tb.Fatal(err)
		}
		jsonArea := hdr[4096:]
		var m map[string]any
		if err := json.Unmarshal(bytes.TrimRight(jsonArea, "\x00"), &m); err != nil {
			tb.Fatalf("header copy at %d: %v", off, err)
		}
		edit(m)
		edited, err := json.Marshal(m)
		if err != nil || len(edited) >= len(jsonArea) {
			tb.Fatalf("edited JSON: %v (%d bytes)", err, len(edited))
		}
		clear(jsonArea)
		copy(jsonArea, edited)
		const csumOff, csumLen = 448, 64
		clear(hdr[csumOff : csumOff+csumLen])
		sum := sha256.Sum256(hdr)
		copy(hdr[csumOff:], sum[:])
		if _, err := f.WriteAt(hdr, off); err != nil {
			tb.Fatal(err)
		}
	}
}
