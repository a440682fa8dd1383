package main

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
)

// The exit codes separate the outcomes (docs/operations.md): a node that
// never answers before --timeout is "unreachable", exit 3, and --json says
// so per node; a refusal (exit 1) wins over unreachable nodes.
func TestRecoverExitCodesSeparateUnreachableFromRefused(t *testing.T) {
	path, secret := newSecretFile(t)
	wrongPath, _ := newSecretFile(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()

	code, stdout, stderr := runDmctl(t, "recover", "-e", closed, "--master-secret", path, "--insecure-dev-attestation", "--json", "--timeout", "1s")
	if code != exitUnreachable {
		t.Fatalf("closed port: exit %d, want %d\n%s\n%s", code, exitUnreachable, stdout, stderr)
	}
	if !hasOutcome(t, stdout, closed, "unreachable") {
		t.Errorf("no unreachable outcome for %s in\n%s", closed, stdout)
	}

	addr, _ := startNode(t, secret)
	code, stdout, _ = runDmctl(t, "recover", "-e", addr, "-e", closed, "--master-secret", wrongPath, "--insecure-dev-attestation", "--json", "--timeout", "1s")
	if code != exitFailed || !hasOutcome(t, stdout, addr, "refused") || !hasOutcome(t, stdout, closed, "unreachable") {
		t.Fatalf("refused + unreachable: exit %d, want %d\n%s", code, exitFailed, stdout)
	}
	if !strings.Contains(stdout, `"refused":1`) || !strings.Contains(stdout, `"unreachable":1`) || !strings.Contains(stdout, `"exitCode":1`) {
		t.Errorf("summary line does not count the outcomes:\n%s", stdout)
	}
}

func hasOutcome(t *testing.T, stdout, endpoint, outcome string) bool {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var l progressLine
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		if l.Endpoint == endpoint && l.Outcome == outcome {
			return true
		}
	}
	return false
}
