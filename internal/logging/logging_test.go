package logging

import (
	"bufio"
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(buf)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not one JSON object per line: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestLineContract(t *testing.T) {
	var buf bytes.Buffer
	log := New(zapcore.AddSync(&buf), zapcore.InfoLevel)
	log.Named("rejoinClient").Warn("Failed to rejoin on endpoint", zap.String("endpoint", "10.0.2.100:30090"))
	log.Info("Starting disk-mapper", Event("start"))
	log.Debug("invisible")

	got := lines(t, &buf)
	if len(got) != 2 {
		t.Fatalf("%d lines, want 2", len(got))
	}
	first := got[0]
	if first["level"] != "WARN" || first["logger"] != "rejoinClient" || first["msg"] != "Failed to rejoin on endpoint" ||
		first["endpoint"] != "10.0.2.100:30090" {
		t.Fatalf("line = %v", first)
	}
	ts, _ := first["ts"].(string)
	if _, err := time.Parse(time.RFC3339, ts); err != nil || !strings.HasSuffix(ts, "Z") || strings.Contains(ts, ".") {
		t.Fatalf("ts %q is not RFC 3339 UTC seconds", ts)
	}
	if caller, _ := first["caller"].(string); !regexp.MustCompile(`^logging/logging_test\.go:\d+$`).MatchString(caller) {
		t.Fatalf("caller %q is not dir/file.go:line", caller)
	}
	if first[EventKey] != "failed_to_rejoin_on_endpoint" {
		t.Fatalf("derived event = %v", first[EventKey])
	}
	if got[1][EventKey] != "start" {
		t.Fatalf("explicit event = %v", got[1][EventKey])
	}
}

func TestEventIsNeverDuplicated(t *testing.T) {
	var buf bytes.Buffer
	log := New(zapcore.AddSync(&buf), zapcore.InfoLevel).With(Event("from_with"))
	log.Info("hello")
	raw := buf.String()
	if strings.Count(raw, `"event"`) != 1 || !strings.Contains(raw, `"event":"from_with"`) {
		t.Fatalf("line = %s", raw)
	}
}

func TestEventFromMessage(t *testing.T) {
	for msg, want := range map[string]string{
		"Waiting for decryption key": "waiting_for_decryption_key",
		"Received state disk key and measurement secret, shutting down server": "received_state_disk_key_and_measurement_secret_shutting_down_server",
		"  --odd--  ": "odd",
		"":            "",
	} {
		if got := EventFromMessage(msg); got != want {
			t.Errorf("EventFromMessage(%q) = %q, want %q", msg, got, want)
		}
	}
}
