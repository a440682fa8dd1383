package recoveryserver

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/testutil"
)

// TestLogLines checks the lines operators know from seed 003, word for word,
// with their logger names and event fields.
func TestLogLines(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey})
	cc := dial(t, h.addr, nil)
	if _, err := push(testContext(t), cc, s.secret, s.salt, s.diskKey); err != nil {
		t.Fatalf("push: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	cc.Close()
	lines := testutil.ParseLogLines(t, h.logs.String())

	want := []struct{ logger, msg, event string }{
		{constants.LoggerRecoveryServer, "Starting RecoveryServer", "recovery_server_started"},
		{constants.LoggerRecoveryServer, "Received recover call", "recover_call_received"},
		{constants.LoggerRecoveryServer, "Received state disk key and measurement secret, shutting down server", "recovery_key_accepted"},
		{constants.LoggerRecoveryGRPC, "finished streaming call with code OK", "grpc_call_finished"},
		{constants.LoggerRecoveryServer, "RecoveryServer stopped", "recovery_server_stopped"},
	}
	next := 0 // the wanted lines appear in this order
	for _, l := range lines {
		if next < len(want) && l["msg"] == want[next].msg {
			if l["logger"] != want[next].logger || l["event"] != want[next].event || l["level"] != "INFO" {
				t.Errorf("line %q: logger %v event %v level %v, want %s %s INFO",
					want[next].msg, l["logger"], l["event"], l["level"], want[next].logger, want[next].event)
			}
			next++
		}
		if ev, _ := l[logging.EventKey].(string); ev == "" {
			t.Errorf("line without event: %v", l)
		}
	}
	if next != len(want) {
		t.Fatalf("missing or out of order: %q\nlog:\n%s", want[next].msg, h.logs.String())
	}

	grpcLine, _ := findLine(lines, "finished streaming call with code OK")
	for key, value := range map[string]any{"grpc.service": "recoverproto.API", "grpc.method": "Recover", "grpc.code": "OK"} {
		if grpcLine[key] != value {
			t.Errorf("gRPC line %s = %v, want %v", key, grpcLine[key], value)
		}
	}
	if ms, ok := grpcLine["grpc.time_ms"].(float64); !ok || ms < 0 {
		t.Errorf("gRPC line grpc.time_ms = %v, want a non-negative number", grpcLine["grpc.time_ms"])
	}
	if addr, _ := grpcLine["peer.address"].(string); !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Errorf("gRPC line peer.address = %v, want the client's 127.0.0.1 address", grpcLine["peer.address"])
	}
}

func TestRefusalLogLines(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey})
	cc := dial(t, h.addr, nil)
	_, err := push(testContext(t), cc, s.secret, nil, s.wrongKey)
	wantCode(t, "wrong key", err, codes.PermissionDenied)
	h.cancel()
	h.waitServe(t)
	cc.Close()
	lines := testutil.ParseLogLines(t, h.logs.String())

	refused, ok := findLine(lines, "Recover call refused")
	if !ok || refused["level"] != "WARN" || refused["event"] != "recover_call_refused" || refused["grpc.code"] != "PermissionDenied" {
		t.Errorf("refusal line: %v", refused)
	}
	grpcLine, ok := findLine(lines, "finished streaming call with code PermissionDenied")
	if !ok || grpcLine["logger"] != constants.LoggerRecoveryGRPC || grpcLine["level"] != "WARN" {
		t.Errorf("gRPC line for the refusal: %v", grpcLine)
	}
	if _, ok := findLine(lines, "Received state disk key and measurement secret, shutting down server"); ok {
		t.Error("acceptance logged for a wrong key")
	}
}

// TestNoKeyMaterialInLogs runs every path that handles a key and searches
// the whole log for each secret in every encoding a logger might use.
func TestNoKeyMaterialInLogs(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey})
	cc := dial(t, h.addr, nil)
	ctx := testContext(t)

	push(ctx, cc, s.secret, s.salt, s.wrongKey)     // wrong key
	push(ctx, cc, s.secret, s.salt, s.wrongKey[:5]) // malformed key
	push(ctx, cc, s.secret[:7], s.salt, s.diskKey)  // malformed secret
	if _, err := push(ctx, cc, s.secret, s.salt, s.diskKey); err != nil {
		t.Fatalf("push: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	cc.Close()

	logs := h.logs.String()
	for name, secret := range map[string][]byte{
		"disk key": s.diskKey, "wrong key": s.wrongKey, "measurement secret": s.secret, "salt": s.salt,
		"7-byte secret prefix": s.secret[:7], "5-byte key prefix": s.wrongKey[:5],
	} {
		for encoding, text := range testutil.KeyEncodings(secret) {
			if strings.Contains(logs, text) {
				t.Errorf("%s appears in the log (%s)", name, encoding)
			}
		}
	}
}
