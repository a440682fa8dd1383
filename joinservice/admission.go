package joinservice

import (
	"context"
	"sync"
	"time"
)

const (
	// initialServiceTime is the service-time guess before any ticket has
	// been measured. It is only used if no request completes within
	// maxFirstMeasurementWait (see acquire), and then only as a lower bound.
	initialServiceTime = 10 * time.Millisecond
	// maxFirstMeasurementWait bounds how long the very first refused
	// requests wait for the first measured service time, so that even the
	// first retry hints reserve real slots instead of guessed ones.
	maxFirstMeasurementWait = 250 * time.Millisecond
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
	// ewmaWeight is the weight of the newest service-time sample.
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
// The slot spacing is serviceTime/capacity, with serviceTime the measured
// time a request holds a slot (Little's law: a full semaphore of capacity
// slots, each held serviceTime, frees one slot every serviceTime/capacity).
// Measuring the hold time, not the work, covers a CPU-bound machine, where
// a slot is held longer than the work takes; and one completed request is
// enough for an accurate estimate, unlike intervals between releases, which
// come in bursts when a batch of requests was admitted together.
type admission struct {
	slots chan struct{}

	mu          sync.Mutex
	serviceTime time.Duration // EWMA of slot hold times; a guess until measured
	measured    bool
	// firstMeasured is closed by the first release: the requests waiting
	// for it then get reservations based on a measured service time.
	firstMeasured chan struct{}
	firstAdmit    time.Time              // first admission (lower bound on service time until measured)
	nextSlot      time.Time              // end of the virtual queue of reserved retries
	reserved      map[string]reservation // client → its reserved slot
	now           func() time.Time
}

func newAdmission(capacity int) *admission {
	return &admission{
		slots:         make(chan struct{}, capacity),
		serviceTime:   initialServiceTime,
		firstMeasured: make(chan struct{}),
		reserved:      map[string]reservation{},
		now:           time.Now,
	}
}

// acquire takes a slot for client (the disk UUID). A slot that is free
// right now goes to whoever asks (a reserved client that comes late must not
// leave it idle). Waiting for a slot, though, is for due clients: while
// refused clients hold reservations, a client that is not due is refused at
// once and queued behind them, instead of waiting in the grace and taking a
// due client's slot. A due client (or anyone, when nobody is queued) waits a
// short grace for a slot before it is refused. Before the first request has
// completed, the grace lasts until it completes (bounded by
// maxFirstMeasurementWait), so no hint is based on a guessed service time.
func (a *admission) acquire(ctx context.Context, client string) (release func(), retryAfter time.Duration, ok bool) {
	select {
	case a.slots <- struct{}{}:
		return a.admitted(client), 0, true
	default:
	}
	if !a.mayWait(client) {
		return nil, a.reserve(client), false
	}
	grace, measuredCh := a.grace()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case a.slots <- struct{}{}:
		return a.admitted(client), 0, true
	case <-ctx.Done():
		return nil, 0, false
	case <-timer.C:
	case <-measuredCh:
		// The service time is known now; one more chance at a slot freed
		// by the release that measured it, else a reservation built on it.
		select {
		case a.slots <- struct{}{}:
			return a.admitted(client), 0, true
		default:
		}
	}
	return nil, a.reserve(client), false
}

// grace is how long a request that may wait waits for a slot: twice the
// service time (a due client that arrives just after a release must not miss
// the next one, or it goes to the end of the queue), capped by maxGrace;
// before the first measurement, until it (see acquire).
func (a *admission) grace() (time.Duration, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.measured {
		return maxFirstMeasurementWait, a.firstMeasured
	}
	return min(2*a.serviceTime, maxGrace), nil
}

// mayWait: nobody is queued, or client's reserved time has come.
func (a *admission) mayWait(client string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if r, ok := a.reserved[client]; ok && r.due(now) {
		return true
	}
	return !a.nextSlot.After(now)
}

// admitted records client's admission and returns its release function.
func (a *admission) admitted(client string) func() {
	a.mu.Lock()
	delete(a.reserved, client)
	start := a.now()
	if a.firstAdmit.IsZero() {
		a.firstAdmit = start
	}
	a.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			a.released(start)
			<-a.slots
		})
	}
}

// reserve appends a retry slot for client to the virtual queue and returns
// how long from now it begins.
//
// A client that came back at its reserved time and still found no slot (the
// service fell behind its schedule, e.g. a CPU-bound burst) is not sent to
// the end of the queue, which would cost it a whole queue length for the
// service's delay: it comes back one service time later (by then the
// requests that held the slots have ended), and the queue's tail moves back
// by one slot so that the schedule stretches by the delay it absorbed. Only
// once: a client refused again after that goes to the end of the queue, so
// that a service that stays behind (a starved CPU) sees its retries paced by
// the queue, not one per client and service time (a retry storm).
func (a *admission) reserve(client string) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.nextSlot.Before(now) {
		a.nextSlot = now
	}
	drain := a.drainIntervalLocked(now)
	a.nextSlot = a.nextSlot.Add(drain)
	next := reservation{at: a.nextSlot}
	if r, ok := a.reserved[client]; ok && r.due(now) && !r.requeued {
		next = reservation{at: now.Add(max(a.serviceTime, drain)), requeued: true}
	}
	if len(a.reserved) >= maxReservations {
		a.pruneReservations(now)
	}
	if len(a.reserved) < maxReservations {
		a.reserved[client] = next
	}
	return min(next.at.Sub(now), maxRetryDelay)
}

// reservation is a refused client's reserved retry time.
type reservation struct {
	at       time.Time
	requeued bool // already moved to the front once after a due refusal
}

// due: the client's reserved time has come (within dueTolerance).
func (r reservation) due(now time.Time) bool { return !now.Before(r.at.Add(-dueTolerance)) }

// drainIntervalLocked is how often a full semaphore frees a slot. Until a
// release was measured, the oldest request's age is a lower bound on the
// service time (it has held its slot that long already).
func (a *admission) drainIntervalLocked(now time.Time) time.Duration {
	s := a.serviceTime
	if !a.measured && !a.firstAdmit.IsZero() {
		s = max(s, now.Sub(a.firstAdmit))
	}
	return max(s/time.Duration(cap(a.slots)), time.Microsecond)
}

// pruneReservations forgets clients that did not come back in time.
func (a *admission) pruneReservations(now time.Time) {
	for c, r := range a.reserved {
		if r.at.Add(maxGrace).Before(now) {
			delete(a.reserved, c)
		}
	}
}

// released records how long a request admitted at start held its slot. The
// first sample replaces the guess outright; later ones move an EWMA.
func (a *admission) released(start time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	held := min(a.now().Sub(start), maxRetryDelay)
	if !a.measured {
		a.serviceTime = held
		a.measured = true
		close(a.firstMeasured)
		return
	}
	a.serviceTime = time.Duration(ewmaWeight*float64(held) + (1-ewmaWeight)*float64(a.serviceTime))
}

// estimate is the current service-time estimate.
func (a *admission) estimate() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.serviceTime
}

// load is the number of requests holding a slot.
func (a *admission) load() int { return len(a.slots) }
