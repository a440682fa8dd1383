package joinservice

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for the admission's bookkeeping (its grace
// timers stay real).
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1000, 0)} }

// measuredAdmission returns an admission whose service time is known.
func measuredAdmission(capacity int, serviceTime time.Duration, clock *fakeClock) *admission {
	a := newAdmission(capacity)
	a.now = clock.Now
	a.serviceTime = serviceTime
	a.measured = true
	close(a.firstMeasured)
	return a
}

// Pure scheduling logic on a fake clock; TestOverloadAnswersResourceExhaustedWithRetryInfo,
// TestRetryHintsReserveRealSlots and TestRejoinClientsBackOffUnderOverload
// cover it over real gRPC.
func TestReservationsAreSpacedByServiceRate(t *testing.T) {
	clock := newFakeClock()
	a := measuredAdmission(4, 8*time.Millisecond, clock) // 4 slots of 8 ms: one frees every 2 ms

	for i := 1; i <= 3; i++ {
		if got, want := a.reserve(fmt.Sprint(i)), time.Duration(i)*2*time.Millisecond; got != want {
			t.Errorf("reservation %d: %v, want %v", i, got, want)
		}
	}
	// Once the virtual queue has drained, hints start from now again.
	clock.Advance(time.Second)
	if got := a.reserve("4"); got != 2*time.Millisecond {
		t.Errorf("after the queue drained: %v, want 2ms", got)
	}
}

func TestQueuedClientsGoFirst(t *testing.T) {
	clock := newFakeClock()
	a := measuredAdmission(1, 2*time.Millisecond, clock)
	a.reserve("early") // due at +2ms
	a.reserve("later") // due at +4ms
	if a.mayWait("newcomer") {
		t.Error("a newcomer may take a slot while others are queued")
	}
	if a.mayWait("later") {
		t.Error("a client may take a slot before its reserved time")
	}
	clock.Advance(2 * time.Millisecond)
	if !a.mayWait("early") {
		t.Error("a due client may not wait for a slot")
	}
	clock.Advance(time.Second)
	if !a.mayWait("newcomer") {
		t.Error("a newcomer is refused although the queue drained")
	}
}

func TestServiceTimeIsTheMeasuredHoldTime(t *testing.T) {
	clock := newFakeClock()
	a := newAdmission(4)
	a.now = clock.Now

	// The first completed request replaces the guess outright: one sample
	// is enough for accurate reservations.
	release, _, ok := a.acquire(t.Context(), "first")
	if !ok {
		t.Fatal("a free slot was refused")
	}
	clock.Advance(37 * time.Millisecond)
	release()
	if got := a.estimate(); got != 37*time.Millisecond {
		t.Fatalf("estimate after one 37 ms request: %v, want 37ms (not a blend with the %v guess)", got, initialServiceTime)
	}
	// Later samples move an EWMA towards the new hold time.
	for range 40 {
		release, _, _ := a.acquire(t.Context(), "next")
		clock.Advance(5 * time.Millisecond)
		release()
	}
	if got := a.estimate(); got < 4500*time.Microsecond || got > 5500*time.Microsecond {
		t.Errorf("estimate after many 5 ms requests: %v", got)
	}
	if got, want := a.reserve("queued"), 5*time.Millisecond/4; got < want*9/10 || got > want*11/10 {
		t.Errorf("first reservation %v, want about %v (service time ÷ capacity)", got, want)
	}
}

// TestFirstRefusalsWaitForAMeasuredServiceTime: requests refused before any
// request has completed do not get hints built on the initial guess; they
// wait for the first release and reserve slots on the measured time.
func TestFirstRefusalsWaitForAMeasuredServiceTime(t *testing.T) {
	clock := newFakeClock()
	a := newAdmission(2)
	a.now = clock.Now
	var releases []func()
	for i := range 2 {
		release, _, ok := a.acquire(t.Context(), fmt.Sprint("busy", i))
		if !ok {
			t.Fatal("a free slot was refused")
		}
		releases = append(releases, release)
	}

	type outcome struct {
		ok   bool
		hint time.Duration
		rel  func()
	}
	outcomes := make(chan outcome, 2)
	for i := range 2 {
		go func() {
			rel, hint, ok := a.acquire(context.Background(), fmt.Sprint("waiter", i))
			outcomes <- outcome{ok, hint, rel}
		}()
	}
	// Give both waiters time to block on the full semaphore. Should one
	// start late, it finds the service time already measured and ends the
	// same way: the freed slot or a reservation on the measured time.
	time.Sleep(20 * time.Millisecond)
	clock.Advance(40 * time.Millisecond) // the busy requests take 40 ms
	releases[0]()

	var admitted, refused []outcome
	for range 2 {
		o := <-outcomes
		if o.ok {
			admitted = append(admitted, o)
		} else {
			refused = append(refused, o)
		}
	}
	if len(admitted) != 1 || len(refused) != 1 {
		t.Fatalf("%d admitted, %d refused; want the freed slot taken and one reservation", len(admitted), len(refused))
	}
	// 2 slots of 40 ms free one every 20 ms; the guess would say 5 ms.
	if got := refused[0].hint; got != 20*time.Millisecond {
		t.Errorf("hint %v, want 20ms (measured service time ÷ capacity)", got)
	}
	admitted[0].rel()
	releases[1]()
}

func TestBeforeAnyReleaseTheOldestRequestBoundsTheServiceTime(t *testing.T) {
	clock := newFakeClock()
	a := newAdmission(1)
	a.now = clock.Now
	release, _, _ := a.acquire(t.Context(), "busy")
	defer release()
	clock.Advance(time.Second) // still no release: the service takes ≥ 1 s
	if got := a.reserve("x"); got < time.Second {
		t.Errorf("hint %v while the only request has held its slot for 1 s", got)
	}
}

func TestDueClientRefusedAgainKeepsItsPlace(t *testing.T) {
	clock := newFakeClock()
	a := measuredAdmission(2, 4*time.Millisecond, clock) // a slot frees every 2 ms
	a.reserve("early")                                   // +2ms
	for i := range 10 {
		a.reserve(fmt.Sprint("queued", i)) // +4ms … +22ms
	}
	clock.Advance(2 * time.Millisecond) // "early" is due, but the service is behind
	if got := a.reserve("early"); got != 4*time.Millisecond {
		t.Errorf("due client refused again: hint %v, want one service time (4ms), not the end of the queue", got)
	}
	// The schedule stretched by the slot it gave away: the queue ended at
	// +22ms (20ms from now); the newcomer's slot is two slots later.
	if got := a.reserve("newcomer"); got != 24*time.Millisecond {
		t.Errorf("newcomer: hint %v, want 24ms (tail moved back one slot)", got)
	}
	// A client that comes back early is not due: it goes to the end.
	if got := a.reserve("queued5"); got != 26*time.Millisecond {
		t.Errorf("early returner: hint %v, want the end of the queue (26ms)", got)
	}
	// Refused again when due after its move to the front: the service stays
	// behind, so it goes to the end (no retry every service time).
	clock.Advance(4 * time.Millisecond)
	if got := a.reserve("early"); got != 24*time.Millisecond {
		t.Errorf("refused twice: hint %v, want the end of the queue (24ms)", got)
	}
}
