//go:build vmtest

package integration

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// seedOrder checks the serial log reads like the seed's: "Starting
// RecoveryServer" and "Starting RejoinClient" before the first "Waiting for
// decryption key".
func seedOrder(t *testing.T, label string, lines []vmtest.Line) {
	t.Helper()
	first := func(msg string) int {
		for i, l := range lines {
			if l.Msg() == msg {
				return i
			}
		}
		return -1
	}
	rs, rc, w := first("Starting RecoveryServer"), first("Starting RejoinClient"), first("Waiting for decryption key")
	if rs < 0 || rc < 0 || w < 0 || w < rs || w < rc {
		t.Errorf("%s: serial log order: Starting RecoveryServer #%d, Starting RejoinClient #%d, Waiting for decryption key #%d; want both Starting lines first", label, rs, rc, w)
	}
}

// dmctlStatus runs the real `dmctl status --json` against one node,
// validating its attestation like recover and presenting the operator
// certificate the image's --join-ca requires.
func (s *suite) dmctlStatus(ctx context.Context, t *testing.T, measurements, endpoint string) (map[string]any, int, string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, s.bin.dmctl, "status", "-e", endpoint, "--measurements", measurements,
		"--ak-roots", s.platformCA, "--timeout", "1m", "--client-cert", s.operatorCert, "--client-key", s.operatorKey, "--json")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := 0
	if err := cmd.Run(); err != nil {
		exitErr, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("dmctl status: %v", err)
		}
		code = exitErr.ExitCode()
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(stdout.String())), &m); err != nil {
		t.Logf("dmctl status stdout %q: %v", stdout.String(), err)
	}
	return m, code, stderr.String()
}

// The worker power-off of the seed with its JoinService gone: the serial
// log reads in the seed's order, `dmctl status` over aTLS says the node
// waits for its key (rejoin attempts, error class per endpoint), then
// `dmctl recover` unlocks it.
func TestOperatorStatusAndSeedOrderOnVM(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t)
	n := s.newNode(ctx, t, "node-status")
	uuid := firstBoot(ctx, t, n, js, bootOpts{})
	js.stop()

	b, waiting := deadBoot(ctx, t, n, uuid, bootOpts{label: "status while waiting", extra: []string{"dm.pcr=15"}})
	b.mustMsg(ctx, t, "Failed to rejoin on all endpoints")
	seedOrder(t, b.label, b.Lines())

	st, code, stderr := s.dmctlStatus(ctx, t, b.measurements, b.RecoveryAddr())
	t.Logf("dmctl status: exit %d %v\n%s", code, st, stderr)
	eps, _ := st["joinEndpoints"].([]any)
	classes := 0
	for _, e := range eps {
		if m, ok := e.(map[string]any); ok && m["lastErrorClass"] != nil && m["lastErrorClass"] != "" {
			classes++
		}
	}
	if code != 0 || st["state"] != "waiting_for_key" || st["diskUUID"] != uuid || st["waitingSince"] == nil ||
		st["rejoinRunning"] != true || st["rejoinAttempts"].(float64) < 1 || classes == 0 {
		t.Errorf("dmctl status on the waiting VM: exit %d, %v", code, st)
	}

	push := s.dmctlRecover(ctx, t, s.masterSecret, b.measurements, b.RecoveryAddr())
	if push.exitCode != 0 || !strings.Contains(push.stdout, "Pushed recovery key.") {
		t.Fatalf("dmctl recover: exit %d, stdout %q", push.exitCode, push.stdout)
	}
	recovered(ctx, t, b, waiting, push)
}
