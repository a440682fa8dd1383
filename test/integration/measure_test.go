//go:build vmtest

package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// waitLine waits for the first line of p that pred matches.
func (p *hostProc) waitLine(ctx context.Context, what string, pred func(hostLine) bool) (hostLine, error) {
	for next := 0; ; {
		p.mu.Lock()
		for ; next < len(p.lines); next++ {
			if pred(p.lines[next]) {
				l := p.lines[next]
				p.mu.Unlock()
				return l, nil
			}
		}
		exited, changed := p.exited, p.changed
		p.mu.Unlock()
		if exited {
			return hostLine{}, fmt.Errorf("%s exited without %s", p.name, what)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return hostLine{}, fmt.Errorf("%s: waiting for %s: %w", p.name, what, ctx.Err())
		}
	}
}

// Issue 9 item 4, end to end: the genuine image, booted with ONE kernel
// parameter added (a daemon flag the host chose), gets no key. The
// JoinService refuses the node's attestation (its log says the
// measurements differ, PCR 12), `dmctl recover` with the image's
// measurements refuses it too and names PCR 12, and the node keeps
// waiting. Only an operator who accepts exactly that configuration's
// measurements (computed by the same code) can unlock it: the guest's PCR
// 12 is what the harness predicts for that command line.
func TestAddedKernelFlagGetsNoKey(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t) // accepts the genuine configuration only
	n := s.newNode(ctx, t, "node-measure")
	uuid := firstBoot(ctx, t, n, js, bootOpts{})

	// A flag the daemon accepts (the path rule allows it), so the node
	// runs and attests as usual: only its measurements tell it apart.
	attack := bootOpts{label: "one flag added", peers: []peer{js.peer()},
		extra: []string{"dm.key-handover-file=/run/disk-mapper/host-chosen.key"}}
	genuine, added := s.mustMeasurements(t, bootOpts{}), s.mustMeasurements(t, attack)
	if a, b := readFile(t, genuine), readFile(t, added); a == b {
		t.Fatalf("the added flag does not change the expected measurements: %s", a)
	}
	b := n.boot(ctx, t, attack)
	if got := b.mustMsg(ctx, t, "Preparing existing state disk").Str("uuid"); got != uuid {
		t.Errorf("%s: uuid %s, want %s", b.label, got, uuid)
	}
	b.must(ctx, t, waitingLine, "waiting line")

	refused, err := js.waitLine(ctx, "a refused attestation", func(l hostLine) bool {
		return l.str("msg") == "aTLS handshake failed" && strings.Contains(l.str("error"), "measurements differ")
	})
	if err != nil {
		t.Fatal(err)
	}
	if e := refused.str("error"); !strings.Contains(e, "PCR 12 mismatch") || strings.Contains(e, "PCR 11 mismatch") {
		t.Errorf("JoinService: %q, want PCR 12 (the configuration) named, not PCR 11 (the image)", e)
	}
	tickets := 0
	for _, l := range js.Lines() {
		if l.str("msg") == "Issued rejoin ticket" && l.str("uuid") == uuid {
			tickets++
		}
	}
	if tickets != 1 {
		t.Errorf("JoinService issued %d tickets for %s, want only the first boot's", tickets, uuid)
	}
	b.mustMsg(ctx, t, "Failed to rejoin on endpoint")

	push := s.dmctlRecover(ctx, t, s.masterSecret, genuine, b.RecoveryAddr())
	out := push.stdout + push.stderr
	if push.exitCode == 0 || !strings.Contains(out, "measurements differ") || !strings.Contains(out, "PCR 12 mismatch") {
		t.Fatalf("dmctl recover with the image's measurements: exit %d, want non-zero saying the measurements differ at PCR 12:\n%s", push.exitCode, out)
	}

	// Still waiting, no key: the daemon neither unlocked nor exited, and
	// its RejoinClient is still refused round after round.
	last, err := b.WaitForFrom(ctx, 0, vmtest.Msg("Failed to rejoin on endpoint"))
	if err == nil {
		_, err = b.WaitForFrom(ctx, last.Index+1, vmtest.Msg("Failed to rejoin on endpoint"))
	}
	if err != nil {
		t.Fatalf("%s: the RejoinClient stopped trying: %v", b.label, err)
	}
	for _, l := range b.Lines() {
		if l.Event() == "summary" || l.Msg() == "Disk key accepted" || l.Msg() == "State disk unlocked" {
			t.Fatalf("%s: the node got a key: %s", b.label, l.Raw)
		}
	}
	select {
	case <-b.Done():
		t.Fatalf("%s: the VM ended while it should wait for a key", b.label)
	default:
	}

	// The control: the values the harness computed for this very command
	// line are the guest's, so the refusal above is the added flag's.
	ok := s.dmctlRecover(ctx, t, s.masterSecret, added, b.RecoveryAddr())
	if ok.exitCode != 0 || !strings.Contains(ok.stdout, "Pushed recovery key.") {
		t.Fatalf("dmctl recover with that boot's own measurements: exit %d:\n%s%s", ok.exitCode, ok.stdout, ok.stderr)
	}
	b.summary(ctx, t, "RecoveryServer", false)
	if err := b.Kill(); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
