package attestation

import (
	"context"
	"sync"
)

// tpmScheduler is the one lock around the TPM device, with two classes of
// waiters. A TPM runs one command at a time, and swtpm serves one connection
// at a time, so quotes cannot overlap; what the scheduler decides is who
// goes next. Foreground waiters (the node's own RejoinClient) always go
// before background waiters (quotes for whoever connected to the
// RecoveryServer), so a foreground quote waits for at most the one quote
// already running, never for a queue. Waiting honours the context: a
// waiter whose context ends leaves the queue at once and never touches the
// TPM.
type tpmScheduler struct {
	mu         sync.Mutex
	busy       bool
	foreground []chan struct{} // FIFO
	background []chan struct{} // FIFO
}

// acquire returns nil once the caller holds the device; it must call
// release then. It returns ctx's error, holding nothing, if ctx ends first.
func (s *tpmScheduler) acquire(ctx context.Context, background bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if !s.busy {
		s.busy = true
		s.mu.Unlock()
		return nil
	}
	ready := make(chan struct{})
	if background {
		s.background = append(s.background, ready)
	} else {
		s.foreground = append(s.foreground, ready)
	}
	s.mu.Unlock()

	select {
	case <-ready:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	removed := s.removeLocked(ready, background)
	s.mu.Unlock()
	if !removed {
		// release handed us the device while ctx ended; pass it on.
		s.release()
	}
	return ctx.Err()
}

func (s *tpmScheduler) removeLocked(ready chan struct{}, background bool) bool {
	q := &s.foreground
	if background {
		q = &s.background
	}
	for i, w := range *q {
		if w == ready {
			*q = append((*q)[:i], (*q)[i+1:]...)
			return true
		}
	}
	return false
}

// release hands the device to the first foreground waiter, else to the
// first background waiter, else frees it.
func (s *tpmScheduler) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var next chan struct{}
	switch {
	case len(s.foreground) > 0:
		next, s.foreground = s.foreground[0], s.foreground[1:]
	case len(s.background) > 0:
		next, s.background = s.background[0], s.background[1:]
	default:
		s.busy = false
		return
	}
	close(next)
}

// waiting reports the queued waiters (tests).
func (s *tpmScheduler) waiting() (foreground, background int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.foreground), len(s.background)
}
