// Package backoff spaces out retries: capped exponential windows with
// random jitter, and a sleep that ends early with its context.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Exponential is capped exponential backoff: the window before retry n
// (n = 1 after the first failure) is min(Cap, Base·2^(n-1)).
type Exponential struct {
	Base, Cap time.Duration
	// Rand returns uniform values in [0, 1); nil means math/rand/v2.
	Rand func() float64
}

// Ceiling is the upper bound of the window before retry n.
func (e Exponential) Ceiling(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := e.Base
	for i := 1; i < n; i++ {
		if d >= e.Cap/2 { // doubling would reach or pass the cap (and never overflows)
			return e.Cap
		}
		d *= 2
	}
	return min(d, e.Cap)
}

// FullJitter is a uniformly random pause in [0, Ceiling(n)). Full jitter
// (rather than "exponential plus a little jitter") is what spreads many
// clients that failed at the same moment, so that they do not come back in
// lock-step.
func (e Exponential) FullJitter(n int) time.Duration {
	return time.Duration(e.uniform() * float64(e.Ceiling(n)))
}

// EqualJitter is a random pause in [Ceiling(n)/2, Ceiling(n)): at least
// half the window, so a peer that is not up yet is not hammered, and random
// in the other half, so that clients do not retry in lock-step.
func (e Exponential) EqualJitter(n int) time.Duration {
	half := e.Ceiling(n) / 2
	return half + time.Duration(e.uniform()*float64(half))
}

func (e Exponential) uniform() float64 {
	if e.Rand == nil {
		return rand.Float64()
	}
	r := e.Rand()
	if r < 0 || r >= 1 { // a broken source must not produce a pause outside the window
		r = 0
	}
	return r
}

// Sleep waits for d or until ctx ends, whichever is first; it returns
// ctx.Err() if ctx ended (at once for d <= 0 too).
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
