package rejoinclient

import "time"

// backoff computes the pause before round n (n = 1 after the first failed
// round) as capped exponential backoff with full jitter: a uniformly random
// duration in [0, min(cap, base·2^(n-1))). Full jitter (rather than
// "exponential plus a little jitter") is what spreads a whole cluster of
// nodes that lost the control plane at the same moment, so that they do not
// come back in lock-step when it returns.
type backoff struct {
	base, cap time.Duration
	rand      func() float64 // uniform in [0, 1)
}

// ceiling is the upper bound of the jitter window for round n.
func (b backoff) ceiling(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := b.base
	for i := 1; i < n; i++ {
		if d >= b.cap/2 { // doubling would reach or pass the cap (and never overflows)
			return b.cap
		}
		d *= 2
	}
	return min(d, b.cap)
}

// delay is the jittered pause before round n.
func (b backoff) delay(n int) time.Duration {
	r := b.rand()
	if r < 0 || r >= 1 { // a broken source must not produce a pause outside the window
		r = 0
	}
	return time.Duration(r * float64(b.ceiling(n)))
}
