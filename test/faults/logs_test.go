package faults

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/testutil"
)

// logSink is one component's log; every sink of the suite is kept so that
// TestMain can scan all of them for key material.
type logSink struct {
	name string
	testutil.LogBuffer
}

// count is how many lines contain every one of parts.
func (s *logSink) count(parts ...string) int {
	n := 0
	for _, line := range strings.Split(s.String(), "\n") {
		all := line != ""
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

var registry struct {
	mu    sync.Mutex
	sinks []*logSink
	keys  [][]byte
}

// newLog returns a debug-level logger of the log contract whose output is
// kept for the key scan.
func newLog(t testing.TB, name string) (*zap.Logger, *logSink) {
	s := &logSink{name: t.Name() + "/" + name}
	registry.mu.Lock()
	registry.sinks = append(registry.sinks, s)
	registry.mu.Unlock()
	return logging.New(s, zapcore.DebugLevel).Named(name), s
}

// keepOutput registers captured output (the daemon's stdout) for the scan.
func keepOutput(t testing.TB, name string) *logSink {
	s := &logSink{name: t.Name() + "/" + name}
	registry.mu.Lock()
	registry.sinks = append(registry.sinks, s)
	registry.mu.Unlock()
	return s
}

// usedKey registers key material the suite handed to a component; no log
// may contain it in any encoding.
func usedKey(k []byte) []byte {
	registry.mu.Lock()
	registry.keys = append(registry.keys, append([]byte(nil), k...))
	registry.mu.Unlock()
	return k
}

// randomKey returns a fresh registered 32-byte key (t may be nil in
// goroutines that must not call t.Fatal).
func randomKey(_ testing.TB) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return usedKey(k)
}

// encodings are the forms a key could leak in: the common ones plus Go's
// quoting and zap's JSON escaping of the raw bytes in a string field.
func encodings(k []byte) map[string]string {
	forms := testutil.KeyEncodings(k)
	forms["go-quoted"] = strings.Trim(fmt.Sprintf("%q", k), `"`)
	forms["zap-json"] = zapJSONForm(k)
	return forms
}

// zapJSONForm is how the log contract's encoder writes k as a string value.
func zapJSONForm(k []byte) string {
	var b bytes.Buffer
	logging.New(zapcore.AddSync(&b), zapcore.InfoLevel).Info("x", zap.ByteString("v", k))
	var line map[string]json.RawMessage
	if err := json.Unmarshal(b.Bytes(), &line); err != nil {
		return string(k)
	}
	return strings.Trim(string(line["v"]), `"`)
}

// scanLogsForKeys reports every log sink that contains a registered key; it
// returns the number of hits.
func scanLogsForKeys(w io.Writer) int {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	hits, bytesScanned := 0, 0
	for _, s := range registry.sinks {
		text := s.String()
		bytesScanned += len(text)
		for _, k := range registry.keys {
			for enc, form := range encodings(k) {
				if strings.Contains(text, form) {
					hits++
					fmt.Fprintf(w, "KEY LEAK: log %s contains a key (%s)\n", s.name, enc)
				}
			}
		}
	}
	fmt.Fprintf(w, "key hygiene: %d logs (%d bytes) scanned for %d keys in %d encodings: %d hits\n",
		len(registry.sinks), bytesScanned, len(registry.keys), len(encodings(nil)), hits)
	return hits
}

// TestKeyScanFindsPlantedKey proves the scan can fail: a key logged the
// ways code could leak it is found (checked on a private sink, so the
// suite's verdict is not affected).
func TestKeyScanFindsPlantedKey(t *testing.T) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	leaks := map[string]zap.Field{
		"ByteString": zap.ByteString("leak", k),
		"Binary":     zap.Binary("leak", k),
		"String":     zap.String("leak", string(k)),
		"hex":        zap.String("leak", hex.EncodeToString(k)),
		"%X":         zap.String("leak", fmt.Sprintf("%X", k)),
		"base64url":  zap.String("leak", base64.RawURLEncoding.EncodeToString(k)),
		"Any":        zap.Any("leak", k),
		"error":      zap.Error(fmt.Errorf("bad key %x", k)),
	}
	for name, f := range leaks {
		s := &logSink{name: "planted"}
		logging.New(s, zapcore.DebugLevel).Info("oops", f)
		found := false
		for _, form := range encodings(k) {
			found = found || strings.Contains(s.String(), form)
		}
		if !found {
			t.Errorf("a key logged with %s is not found by the scan: %s", name, s)
		}
	}
}
