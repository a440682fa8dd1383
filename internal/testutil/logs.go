package testutil

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
)

// LogBuffer is a log sink (a zapcore.WriteSyncer) that servers may write to
// from many goroutines while the test reads it.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Sync is a no-op: the buffer holds everything already.
func (b *LogBuffer) Sync() error { return nil }

func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ParseLogLines parses every line of raw JSON logs; a line that is not JSON
// fails the test, because the log contract allows no other lines.
func ParseLogLines(tb testing.TB, raw string) []map[string]any {
	tb.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(raw), "\n") {
		if l == "" {
			continue
		}
		var line map[string]any
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			tb.Fatalf("log line is not JSON: %q: %v", l, err)
		}
		lines = append(lines, line)
	}
	return lines
}
