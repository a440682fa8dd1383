package attestation

import (
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
)

// hangGuard only keeps a broken build from hanging; it is no threshold.
const hangGuard = 10 * time.Second

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(hangGuard); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func binding(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, BindingSize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// A foreground waiter that arrives after a queue of background waiters is
// served first: the RejoinClient waits for the quote the TPM is running, not
// for the RecoveryServer's queue.
func TestSchedulerForegroundBeforeQueuedBackground(t *testing.T) {
	var s tpmScheduler
	ctx := context.Background()
	if err := s.acquire(ctx, true); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 4)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if err := s.acquire(ctx, true); err != nil {
				t.Error(err)
				return
			}
			order <- "background"
			s.release()
		})
	}
	waitFor(t, "3 background waiters", func() bool { _, bg := s.waiting(); return bg == 3 })
	wg.Go(func() {
		if err := s.acquire(ctx, false); err != nil {
			t.Error(err)
			return
		}
		order <- "foreground"
		s.release()
	})
	waitFor(t, "the foreground waiter", func() bool { fg, _ := s.waiting(); return fg == 1 })
	s.release()
	wg.Wait()
	if first := <-order; first != "foreground" {
		t.Fatalf("first after the running quote: %s, want foreground", first)
	}
}

func TestSchedulerCancelledWaiterLeavesQueue(t *testing.T) {
	var s tpmScheduler
	if err := s.acquire(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() { got <- s.acquire(ctx, true) }()
	waitFor(t, "the waiter", func() bool { _, bg := s.waiting(); return bg == 1 })
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v, want context.Canceled", err)
	}
	if fg, bg := s.waiting(); fg+bg != 0 {
		t.Fatalf("%d waiters left in the queue", fg+bg)
	}
	s.release()
	// The device is free again: a new caller gets it without waiting.
	short, cancelShort := context.WithTimeout(context.Background(), hangGuard)
	defer cancelShort()
	if err := s.acquire(short, true); err != nil {
		t.Fatalf("device not freed: %v", err)
	}
	s.release()
}

// Background quotes whose context ends while they wait for the TPM (in
// aTLS: the connection closed) return at once and never reach the TPM.
func TestCancelledBackgroundQuotesNeverReachTheTPM(t *testing.T) {
	probe := attestationtest.NewTPMProbe(attestationtest.StartSwTPM(t, "").Open)
	iface, err := NewTPMIssuer(probe.Open, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	iss := iface.(*TPMIssuer)
	bg := NewBackgroundIssuer(iss, QuoteLimits{MaxConcurrent: 8, MaxPerSource: 8})

	held, release := probe.HoldQuotes()
	defer release()
	fgDone := make(chan error, 1)
	go func() { _, err := iss.Issue(context.Background(), binding(t)); fgDone <- err }()
	<-held // the foreground quote holds the TPM

	ctx, cancel := context.WithCancel(context.Background())
	const waiters = 5
	errs := make(chan error, waiters)
	for range waiters {
		go func() { _, err := bg.Issue(ctx, binding(t)); errs <- err }()
	}
	waitFor(t, "queued background quotes", func() bool { _, n := iss.sched.waiting(); return n == waiters })
	cancel()
	for range waiters {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled background quote: %v, want context.Canceled", err)
		}
	}
	release()
	if err := <-fgDone; err != nil {
		t.Fatalf("foreground quote: %v", err)
	}
	if n := probe.Quotes(); n != 1 {
		t.Fatalf("%d TPM2_Quote commands, want 1 (the foreground one only)", n)
	}
}

// blockingIssuer holds every Issue until release is closed.
type blockingIssuer struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingIssuer) Issue(ctx context.Context, _ []byte) ([]byte, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
		return []byte("doc"), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestBackgroundIssuerFailsFastAtItsLimits(t *testing.T) {
	inner := &blockingIssuer{entered: make(chan struct{}, 8), release: make(chan struct{})}
	bg := NewBackgroundIssuer(inner, QuoteLimits{MaxConcurrent: 3, MaxPerSource: 2})
	from := func(src string) context.Context { return WithQuoteSource(context.Background(), src) }

	var wg sync.WaitGroup
	start := func(src string) {
		wg.Go(func() {
			if _, err := bg.Issue(from(src), nil); err != nil {
				t.Errorf("admitted quote from %s: %v", src, err)
			}
		})
		<-inner.entered
	}
	start("192.0.2.1")
	start("192.0.2.1")
	// A third from the same source is over its per-source cap, at once.
	if _, err := bg.Issue(from("192.0.2.1"), nil); !errors.Is(err, ErrQuoteBusy) {
		t.Fatalf("third quote from one source: %v, want ErrQuoteBusy", err)
	}
	start("192.0.2.2")
	// The total is full: another source is refused too, at once.
	if _, err := bg.Issue(from("192.0.2.3"), nil); !errors.Is(err, ErrQuoteBusy) {
		t.Fatalf("quote over the total: %v, want ErrQuoteBusy", err)
	}
	close(inner.release)
	wg.Wait()
	// Finished quotes free their slots.
	if _, err := bg.Issue(from("192.0.2.1"), nil); err != nil {
		t.Fatalf("after the slots were freed: %v", err)
	}
}

// The AK is derived once and then loaded from its saved context; a TPM that
// no longer accepts the context (restarted) gets a fresh derivation, and
// every document still validates against the same pinned AK.
func TestAKIsReusedAcrossQuotes(t *testing.T) {
	swtpm := attestationtest.StartSwTPM(t, "")
	current := swtpm
	var mu sync.Mutex
	probe := attestationtest.NewTPMProbe(func() (transport.TPMCloser, error) {
		mu.Lock()
		defer mu.Unlock()
		return current.Open()
	})
	iss, err := NewTPMIssuer(probe.Open, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	tc, err := swtpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	ak, err := createAK(tc)
	if err != nil {
		t.Fatal(err)
	}
	flush(tc, ak.handle.Handle)
	tc.Close()
	pub, err := tpm2.Pub(ak.public)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewTPMValidator(ValidatorConfig{PinnedAKs: []crypto.PublicKey{pub}})
	if err != nil {
		t.Fatal(err)
	}
	quote := func() {
		t.Helper()
		b := binding(t)
		doc, err := iss.Issue(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Validate(context.Background(), doc, b); err != nil {
			t.Fatalf("Validate: %v", err)
		}
	}
	primaries := func() int { return probe.Count(tpm2.TPMCCCreatePrimary) - 1 } // the test's own createAK is not probed; NewTPMIssuer's is
	for range 5 {
		quote()
	}
	if n := primaries(); n != 0 {
		t.Fatalf("%d AK derivations for 5 quotes after the first, want 0 (saved context reused)", n)
	}

	// Same TPM after a restart: saved transient contexts are void.
	swtpm.Stop()
	mu.Lock()
	current = attestationtest.StartSwTPM(t, swtpm.StateDir)
	mu.Unlock()
	quote()
	quote()
	if n := primaries(); n != 1 {
		t.Fatalf("%d AK derivations after a TPM restart, want 1", n)
	}
}
