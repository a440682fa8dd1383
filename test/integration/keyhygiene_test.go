//go:build vmtest

package integration

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/test/vmtest"
	"github.com/spf13/afero"
)

// Key hygiene (fault-matrix issue, item 6): every serial log and kernel
// console a boot produced is searched for the secrets of both clusters —
// master key and salt, measurement secret and salt, and the disk key of every
// disk UUID the boot named — raw and in the encodings a log could carry them.

var hygiene struct {
	sync.Mutex
	logs, bytes, hits int
}

// secretsFor returns every secret of the suite's clusters that could reach a
// node whose disks carry uuids.
func (s *suite) secretsFor(t *testing.T, uuids []string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, path := range []string{s.masterSecret, s.wrongSecret} {
		ms, err := masterkey.Load(afero.NewOsFs(), path)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(path)
		out[name+" key"], out[name+" salt"] = ms.Key, ms.Salt
		out[name+" measurement secret"], _ = ms.MeasurementSecret()
		out[name+" measurement salt"], _ = ms.MeasurementSalt()
		for _, u := range uuids {
			out[name+" disk key "+u], _ = ms.DiskKey(u)
		}
	}
	return out
}

// encodings are the forms a key could take in a JSON log line.
func encodings(key []byte) map[string][]byte {
	h := hex.EncodeToString(key)
	return map[string][]byte{
		"raw":       key,
		"hex":       []byte(h),
		"HEX":       bytes.ToUpper([]byte(h)),
		"base64":    []byte(base64.StdEncoding.EncodeToString(key)),
		"base64url": []byte(base64.URLEncoding.EncodeToString(key)),
		"base64raw": []byte(base64.RawStdEncoding.EncodeToString(key)),
		"go-quoted": []byte(strconv.Quote(string(key))),
	}
}

// findKeys reports every secret of secrets that occurs in log.
func findKeys(log []byte, secrets map[string][]byte) []string {
	var hits []string
	for name, key := range secrets {
		for enc, form := range encodings(key) {
			if bytes.Contains(log, form) {
				hits = append(hits, fmt.Sprintf("%s (%s)", name, enc))
			}
		}
	}
	return hits
}

// scanBootForKeys fails the test if the boot's serial log or kernel console
// holds any key.
func scanBootForKeys(t *testing.T, b *boot) {
	t.Helper()
	var serial bytes.Buffer
	var uuids []string
	for _, l := range b.Lines() {
		serial.WriteString(l.Raw)
		serial.WriteByte('\n')
		if u := l.Str("uuid"); u != "" {
			uuids = append(uuids, u)
		}
	}
	console, _ := os.ReadFile(filepath.Join(b.Dir(), "console.log"))
	secrets := b.node.s.secretsFor(t, uuids)
	var hits []string
	for _, log := range [][]byte{serial.Bytes(), console} {
		hits = append(hits, findKeys(log, secrets)...)
	}
	hygiene.Lock()
	hygiene.logs += 2
	hygiene.bytes += serial.Len() + len(console)
	hygiene.hits += len(hits)
	hygiene.Unlock()
	if len(hits) > 0 {
		t.Errorf("%s: key material in the logs: %v", b.label, hits)
	}
}

// printKeyHygiene prints the scan's totals, also to
// build/integration/key-hygiene.txt for `make test`.
func printKeyHygiene(w io.Writer) {
	hygiene.Lock()
	defer hygiene.Unlock()
	if hygiene.logs == 0 {
		return
	}
	line := fmt.Sprintf("key hygiene: %d serial/console logs (%d bytes) scanned for every cluster secret and disk key in 7 encodings: %d hits\n",
		hygiene.logs, hygiene.bytes, hygiene.hits)
	fmt.Fprint(w, line)
	if root, err := vmtest.RepoRoot(); err == nil {
		dir := filepath.Join(root, "build", "integration")
		if os.MkdirAll(dir, 0o755) == nil {
			_ = os.WriteFile(filepath.Join(dir, "key-hygiene.txt"), []byte(line), 0o644)
		}
	}
}

// The scanner itself must be able to fail.
func TestKeyScanFindsPlantedKeys(t *testing.T) {
	key := bytes.Repeat([]byte{0xab, 0x01}, 16)
	secrets := map[string][]byte{"k": key}
	for enc, form := range encodings(key) {
		line := []byte(`{"msg":"oops","v":"` + string(form) + `"}`)
		if len(findKeys(line, secrets)) == 0 {
			t.Errorf("a key logged as %s was not found", enc)
		}
	}
	if hits := findKeys([]byte(`{"msg":"clean"}`), secrets); len(hits) != 0 {
		t.Errorf("false positive: %v", hits)
	}
}
