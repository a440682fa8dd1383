package recoveryserver

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestConcurrentPushesAreSerialised(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	// The delay widens the window in which two checks would overlap if the
	// server did not serialise them.
	checker := &keyChecker{right: s.diskKey, delay: 20 * time.Millisecond}
	h := startServer(t, checker)
	ctx := testContext(t)

	const wrongPushes = 4
	var wg sync.WaitGroup
	errs := make([]error, wrongPushes)
	for i := range wrongPushes {
		cc := dial(t, h.addr, nil) // one connection each, as separate operators would
		wg.Go(func() { _, errs[i] = push(ctx, cc, s.secret, nil, s.wrongKey) })
	}
	wg.Wait()
	for _, err := range errs {
		wantCode(t, "concurrent wrong push", err, codes.PermissionDenied)
	}
	if calls, maxInFlight := checker.stats(); calls != wrongPushes || maxInFlight != 1 {
		t.Fatalf("check: %d calls with at most %d at once, want %d calls one at a time", calls, maxInFlight, wrongPushes)
	}

	// Two right keys at once: exactly one wins, the other is told so.
	results := make([]error, 2)
	for i := range results {
		cc := dial(t, h.addr, nil)
		wg.Go(func() { _, results[i] = push(ctx, cc, s.secret, nil, s.diskKey) })
	}
	wg.Wait()
	var ok, refused int
	for _, err := range results {
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.FailedPrecondition, codes.Unavailable:
			// FailedPrecondition if it reached the server before the
			// shutdown; Unavailable if its connection was closed first.
			refused++
		default:
			t.Errorf("concurrent right push: %v", err)
		}
	}
	if ok != 1 || refused != 1 {
		t.Fatalf("concurrent right pushes: %d OK and %d refused, want 1 and 1", ok, refused)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, maxInFlight := checker.stats(); maxInFlight != 1 {
		t.Errorf("checks overlapped: %d at once", maxInFlight)
	}
}

func TestStalledClientDoesNotBlockLaterPush(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	const streamTimeout = 300 * time.Millisecond
	h := startServer(t, &keyChecker{right: s.diskKey}, func(c *Config) { c.StreamTimeout = streamTimeout })
	ctx := testContext(t)

	staller := dial(t, h.addr, nil)
	start := time.Now() // before the server's stream deadline starts
	stalled := stallAfterSecret(t, ctx, staller, s.secret)

	// While the staller holds its stream open, other pushes are checked at once.
	cc := dial(t, h.addr, nil)
	_, err := push(ctx, cc, s.secret, nil, s.wrongKey)
	wantCode(t, "wrong push beside a stalled client", err, codes.PermissionDenied)

	// The stalled stream ends at the stream deadline, on the server's side.
	_, err = stalled.Recv()
	wantCode(t, "stalled client", err, codes.DeadlineExceeded)
	if waited := time.Since(start); waited < streamTimeout {
		t.Errorf("stalled stream ended after %v, before the %v deadline", waited, streamTimeout)
	}
	h.stillServing(t)

	if _, err := push(ctx, cc, s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("right push after a stalled client: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	staller.Close()
	cc.Close()
}

func TestHungCheckReleasesLockAtStreamDeadline(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	hangKey := testutil.RandomBytes(t, 32)
	checker := &keyChecker{right: s.diskKey, hang: hangKey}
	h := startServer(t, checker, func(c *Config) { c.StreamTimeout = 300 * time.Millisecond })
	ctx := testContext(t)
	cc := dial(t, h.addr, nil)

	// A check that never returns on its own holds the lock only until the
	// stream's deadline cancels its context.
	_, err := push(ctx, cc, s.secret, nil, hangKey)
	wantCode(t, "push whose check hangs", err, codes.DeadlineExceeded)

	if _, err := push(ctx, cc, s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("right push after a hung check: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if calls, _ := checker.stats(); calls != 2 {
		t.Errorf("check called %d times, want 2", calls)
	}
	cc.Close()
}

func TestStalledClientDoesNotDelayShutdown(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	// Long timeouts: if the server waited for the stalled peers, the test
	// would hit its hang guard instead of finishing.
	h := startServer(t, &keyChecker{right: s.diskKey}, func(c *Config) {
		c.HandshakeTimeout = time.Minute
		c.StreamTimeout = time.Minute
	})
	ctx := testContext(t)

	raw := dialRaw(t, h.addr) // stalls in the handshake
	staller := dial(t, h.addr, nil)
	stalled := stallAfterSecret(t, ctx, staller, s.secret)

	cc := dial(t, h.addr, nil)
	if _, err := push(ctx, cc, s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("push: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	_, err := stalled.Recv()
	if c := status.Code(err); c != codes.FailedPrecondition && c != codes.Unavailable {
		t.Errorf("stalled stream after the win: %v, want FailedPrecondition or Unavailable", err)
	}
	expectClosed(t, raw)
	if strings.Contains(h.logs.String(), "recovery_server_forced_stop") {
		t.Error("the stalled peers forced a hard stop; the accepting call should have ended gracefully at once")
	}
	staller.Close()
	cc.Close()
}
