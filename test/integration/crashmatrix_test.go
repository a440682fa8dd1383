//go:build vmtest

package integration

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/test/vmtest"
)

type crashOutcome = testutil.Outcome

// crashMatrix is the VM crash matrix, in the format of the host fault matrix
// (test/faults). DataLost is computed from what the guest read back (bytes of
// synced content that changed or vanished).
var crashMatrix = &testutil.Matrix{Name: "crash matrix", Kind: "crash case", GotWidth: 200}

func recordCrash(t *testing.T, o crashOutcome) {
	t.Helper()
	crashMatrix.Record(t, o)
}

// printCrashMatrix prints the table (if any case ran) and writes it to
// build/integration/crash-matrix.txt.
func printCrashMatrix(stdout io.Writer) {
	if crashMatrix.Len() == 0 {
		return
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "\n== VM crash matrix (SIGKILL of QEMU = power loss; TCG) ==\n")
	crashMatrix.Print(&b)
	fmt.Fprint(stdout, b.String())
	if root, err := vmtest.RepoRoot(); err == nil {
		dir := filepath.Join(root, "build", "integration")
		if os.MkdirAll(dir, 0o755) == nil {
			_ = os.WriteFile(filepath.Join(dir, "crash-matrix.txt"), b.Bytes(), 0o644)
		}
	}
}

// lostBytes compares a file the guest read back (an init "file" line) with
// what was written and synced before the crash: every byte that differs,
// is missing or is extra counts.
func lostBytes(want string, read vmtest.Line) int64 {
	if read.Raw == "" || read.Str("missing") == "true" {
		return int64(len(want))
	}
	got := read.Str("content")
	n := int64(0)
	for i := 0; i < len(want) || i < len(got); i++ {
		if i >= len(want) || i >= len(got) || want[i] != got[i] {
			n++
		}
	}
	return n
}

// diskAfterKill is what the host sees on the state disk file after the power
// loss: the read-only probe the daemon itself runs first (it loads a copy of
// the header, never the file). It tells which step the kill landed in.
type diskAfterKill struct {
	probe    diskencryption.Probe
	err      error
	keyslots int // -1 without a readable LUKS2 header
}

func probeDisk(path string) diskAfterKill {
	p, err := diskencryption.ProbeDevice(path)
	d := diskAfterKill{probe: p, err: err, keyslots: -1}
	if h, ok := readHeaderJSON(path); ok {
		d.keyslots = len(h.Keyslots)
	}
	return d
}

func (d diskAfterKill) initialized() bool {
	return d.err == nil && d.probe.Kind == diskencryption.KindLUKS2 && d.probe.State == diskencryption.StateInitialized
}

// neverInitialized: blank (maybe with the format marker) or our LUKS2 disk
// in "formatting" or "keyed": the next boot must format it again.
func (d diskAfterKill) neverInitialized() bool {
	if d.err != nil {
		return false
	}
	switch d.probe.Kind {
	case diskencryption.KindBlank:
		return true
	case diskencryption.KindLUKS2:
		return d.probe.State == diskencryption.StateFormatting || d.probe.State == diskencryption.StateKeyed
	}
	return false
}

func (d diskAfterKill) String() string {
	if d.err != nil {
		return "probe error: " + d.err.Error()
	}
	s := d.probe.Kind.String()
	if d.probe.State != "" {
		s += "/" + string(d.probe.State)
	}
	if d.keyslots >= 0 {
		s += fmt.Sprintf(", %d keyslot(s)", d.keyslots)
	}
	if d.probe.Reason != "" {
		s += " (" + d.probe.Reason + ")"
	}
	return s
}

// luksHeaderJSON is the part of the primary LUKS2 header's JSON area the
// crash cases look at: how many keyslots, and our state token.
type luksHeaderJSON struct {
	Keyslots map[string]json.RawMessage `json:"keyslots"`
	Tokens   map[string]struct {
		Type  string `json:"type"`
		State string `json:"state"`
	} `json:"tokens"`
}

// readHeaderJSON reads the primary LUKS2 header of the disk file (QEMU
// writes with cache=unsafe reach the host page cache at once, so the host
// sees each header write as soon as the guest issues it). ok is false when
// there is no loadable LUKS2 JSON (blank disk, a write in flight).
func readHeaderJSON(path string) (h luksHeaderJSON, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return h, false
	}
	defer f.Close()
	bin := make([]byte, 4096)
	if _, err := f.ReadAt(bin, 0); err != nil || !bytes.HasPrefix(bin, []byte("LUKS\xba\xbe")) {
		return h, false
	}
	// hdr_size (binary header + JSON area) is a big-endian uint64 at 8.
	size := binary.BigEndian.Uint64(bin[8:16])
	if size <= 4096 || size > 4<<20 {
		return h, false
	}
	area := make([]byte, size-4096)
	if _, err := f.ReadAt(area, 4096); err != nil {
		return h, false
	}
	if i := bytes.IndexByte(area, 0); i >= 0 {
		area = area[:i]
	}
	return h, json.Unmarshal(area, &h) == nil
}

// headerState is our token's state in the primary header ("" if none).
func headerState(path string) string {
	h, ok := readHeaderJSON(path)
	if !ok {
		return ""
	}
	for _, tok := range h.Tokens {
		if tok.Type == constants.LUKSTokenType {
			return tok.State
		}
	}
	return ""
}
