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
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// crashOutcome is one row of the VM crash matrix, in the format of the host
// fault matrix (test/faults/matrix_test.go). DataLost is computed from what
// the guest read back (bytes of synced content that changed or vanished),
// never written as a literal.
type crashOutcome struct {
	Case     string
	Expected string
	Got      string
	Survived bool
	DataLost int64
}

var crashMatrix struct {
	mu   sync.Mutex
	rows []crashOutcome
}

// recordCrash adds a row and fails the test if the case did not survive or
// lost data, so the table and the test verdict never disagree.
func recordCrash(t *testing.T, o crashOutcome) {
	t.Helper()
	crashMatrix.mu.Lock()
	crashMatrix.rows = append(crashMatrix.rows, o)
	crashMatrix.mu.Unlock()
	t.Logf("crash case %q: expected %q, got %q, survived %v, data lost %d bytes", o.Case, o.Expected, o.Got, o.Survived, o.DataLost)
	if !o.Survived {
		t.Errorf("crash case %q did not survive: expected %s, got %s", o.Case, o.Expected, o.Got)
	}
	if o.DataLost != 0 {
		t.Errorf("crash case %q lost %d bytes of synced data", o.Case, o.DataLost)
	}
}

// printCrashMatrix prints the table (if any case ran) and writes it to
// build/integration/crash-matrix.txt.
func printCrashMatrix(stdout io.Writer) {
	crashMatrix.mu.Lock()
	rows := append([]crashOutcome(nil), crashMatrix.rows...)
	crashMatrix.mu.Unlock()
	if len(rows) == 0 {
		return
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Case < rows[j].Case })

	var b bytes.Buffer
	fmt.Fprintf(&b, "\n== VM crash matrix (SIGKILL of QEMU = power loss; TCG) ==\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "case\t| expected\t| got\t| survived\t| data lost")
	fmt.Fprintln(tw, "----\t| --------\t| ---\t| --------\t| ---------")
	survived, lost := 0, int64(0)
	for _, r := range rows {
		if r.Survived {
			survived++
		}
		lost += r.DataLost
		fmt.Fprintf(tw, "%s\t| %s\t| %s\t| %v\t| %d\n", r.Case, r.Expected, crashOneLine(r.Got), r.Survived, r.DataLost)
	}
	tw.Flush()
	fmt.Fprintf(&b, "crash matrix: cases tried %d, cases survived %d, data lost %d bytes\n", len(rows), survived, lost)
	fmt.Fprint(stdout, b.String())
	if root, err := vmtest.RepoRoot(); err == nil {
		dir := filepath.Join(root, "build", "integration")
		if os.MkdirAll(dir, 0o755) == nil {
			_ = os.WriteFile(filepath.Join(dir, "crash-matrix.txt"), b.Bytes(), 0o644)
		}
	}
}

func crashOneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
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
