package joinservice

import (
	"context"
	"sync"
	"time"
)

const (
	// initialServiceTime is the service-time estimate before the first
	// ticket has been measured. It only shapes the first retry hints.
	initialServiceTime = 10 * time.Millisecond
	// maxGrace bounds how long a request waits for a free slot before it is
	// pushed back: long enough to absorb a client that returns a little
	// before its reserved slot, short enough to hold no queue.
	maxGrace = 50 * time.Millisecond
	// maxRetryDelay caps the retry hint, however deep the virtual queue.
	maxRetryDelay = time.Minute
	// dueTolerance lets a client count as due slightly before its slot.
	dueTolerance = time.Millisecond
	// maxReservations bounds the memory of the virtual queue.
	maxReservations = 100_000
	// ewmaWeight is the weight of the newest drain-interval sample.
	ewmaWeight = 0.2
)

// admission is the concurrency limit of the JoinService: a semaphore of
// capacity slots plus a virtual queue that turns every refusal into a
// reserved retry time.
//
// Why reservations: when a thousand nodes reboot at once, a fixed retry
// hint brings them all back together (a retry storm), and random backoff
// leaves the service idle between storms. Handing the k-th refused client
// the k-th future slot brings refused clients back at the rate the service
// frees slots, so the service stays busy and sees no more requests than it
// can take plus stragglers.
//
// The slot spacing is the measured interval between releases while the
// semaphore is full (the drain interval), not serviceTime/capacity: when the
// machine is CPU-bound a slot is held longer than the work takes, and only
// the drain rate says when the next slot really frees.
type admission struct {
	slots chan struct{}

	mu            sync.Mutex
	drainInterval time.Duration // EWMA of the time between releases of a full semaphore
	lastRelease   time.Time
	nextSlot      time.Time            // end of the virtual queue of reserved retries
	reserved      map[string]time.Time // client → its reserved slot
	now           func() time.Time
}

func newAdmission(capacity int) *admission {
	return &admission{
		slots:         make(chan struct{}, capacity),
		drainInterval: initialServiceTime / time.Duration(capacity),
		reserved:      map[string]time.Time{},
		now:           time.Now,
	}
}

// acquire takes a slot for client (the disk UUID). A slot that is free
// right now goes to whoever asks (a reserved client that comes late must not
// leave it idle). Waiting for a slot, though, is for due clients: while
// refused clients hold reservations, a client that is not due is refused at
// once and queued behind them, instead of waiting in the grace and taking a
// due client's slot. A due client (or anyone, when nobody is queued) waits a
// short grace for a slot before it is refused.
func (a *admission) acquire(ctx context.Context, client string) (release func(), retryAfter time.Duration, ok bool) {
	select {
	case a.slots <- struct{}{}:
		return a.admitted(client), 0, true
	default:
	}
	if !a.mayWait(client) {
		return nil, a.reserve(client), false
	}
	// Wait about one service time (capacity drain intervals).
	grace := min(a.estimate()*time.Duration(cap(a.slots)), maxGrace)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case a.slots <- struct{}{}:
		return a.admitted(client), 0, true
	case <-ctx.Done():
		return nil, 0, false
	case <-timer.C:
		return nil, a.reserve(client), false
	}
}

// mayWait: nobody is queued, or client's reserved time has come.
func (a *admission) mayWait(client string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if t, ok := a.reserved[client]; ok && !now.Before(t.Add(-dueTolerance)) {
		return true
	}
	return !a.nextSlot.After(now)
}

func (a *admission) admitted(client string) func() {
	a.mu.Lock()
	delete(a.reserved, client)
	a.mu.Unlock()
	return a.releaser()
}

func (a *admission) releaser() func() {
	return func() {
		a.released(len(a.slots) == cap(a.slots))
		<-a.slots
	}
}

// reserve appends a retry slot for client to the virtual queue and returns
// how long from now it begins.
func (a *admission) reserve(client string) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.nextSlot.Before(now) {
		a.nextSlot = now
	}
	a.nextSlot = a.nextSlot.Add(a.drainInterval)
	if len(a.reserved) >= maxReservations {
		a.pruneReservations(now)
	}
	if len(a.reserved) < maxReservations {
		a.reserved[client] = a.nextSlot
	}
	return min(a.nextSlot.Sub(now), maxRetryDelay)
}

// pruneReservations forgets clients that did not come back in time.
func (a *admission) pruneReservations(now time.Time) {
	for c, t := range a.reserved {
		if t.Add(maxGrace).Before(now) {
			delete(a.reserved, c)
		}
	}
}

// released records a release; only intervals between releases of a full
// semaphore measure the drain rate (an idle service releases rarely).
func (a *admission) released(full bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if full && !a.lastRelease.IsZero() {
		d := min(now.Sub(a.lastRelease), maxRetryDelay)
		a.drainInterval = time.Duration(ewmaWeight*float64(d) + (1-ewmaWeight)*float64(a.drainInterval))
	}
	if full {
		a.lastRelease = now
	} else {
		a.lastRelease = time.Time{}
	}
}

// estimate is the current drain interval.
func (a *admission) estimate() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.drainInterval
}

// load is the number of requests holding a slot.
func (a *admission) load() int { return len(a.slots) }
