package attestation

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

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
