package joinservice

import (
	"fmt"
	"testing"
	"time"
)

// Pure scheduling logic on a fake clock; TestOverloadAnswersResourceExhaustedWithRetryInfo
// and TestRejoinClientsBackOffUnderOverload cover it over real gRPC.
func TestReservationsAreSpacedByServiceRate(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAdmission(4)
	a.now = func() time.Time { return now }
	a.drainInterval = 2 * time.Millisecond // one slot frees every 2 ms

	for i := 1; i <= 3; i++ {
		if got, want := a.reserve(fmt.Sprint(i)), time.Duration(i)*2*time.Millisecond; got != want {
			t.Errorf("reservation %d: %v, want %v", i, got, want)
		}
	}
	// Once the virtual queue has drained, hints start from now again.
	now = now.Add(time.Second)
	if got := a.reserve("4"); got != 2*time.Millisecond {
		t.Errorf("after the queue drained: %v, want 2ms", got)
	}
}

func TestQueuedClientsGoFirst(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAdmission(1)
	a.now = func() time.Time { return now }
	a.drainInterval = 2 * time.Millisecond
	a.reserve("early") // due at +2ms
	a.reserve("later") // due at +4ms
	if a.mayWait("newcomer") {
		t.Error("a newcomer may take a slot while others are queued")
	}
	if a.mayWait("later") {
		t.Error("a client may take a slot before its reserved time")
	}
	now = now.Add(2 * time.Millisecond)
	if !a.mayWait("early") {
		t.Error("a due client may not wait for a slot")
	}
	now = now.Add(time.Second)
	if !a.mayWait("newcomer") {
		t.Error("a newcomer is refused although the queue drained")
	}
}

func TestDrainIntervalFollowsReleasesOfAFullSemaphore(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAdmission(4)
	a.now = func() time.Time { return now }
	for range 50 {
		now = now.Add(500 * time.Microsecond)
		a.released(true)
	}
	if est := a.estimate(); est < 450*time.Microsecond || est > 550*time.Microsecond {
		t.Errorf("estimate %v after releases every 500µs", est)
	}
	// Releases of a semaphore that is not full say nothing about the rate.
	before := a.estimate()
	for range 10 {
		now = now.Add(time.Second)
		a.released(false)
	}
	if a.estimate() != before {
		t.Errorf("idle releases moved the estimate from %v to %v", before, a.estimate())
	}
}
