package backoff

import (
	"context"
	"testing"
	"time"
)

// Pure logic. The real-round tests that cover the pauses between attempts
// are rejoinclient's TestServeRoundsRepeatWithRediscovery and
// TestServeBackoffStillAppliesWhenAnEndpointFailedWithoutHint, and dmctl's
// recover tests against nodes that come up late.
func TestCeilingDoublesUpToCap(t *testing.T) {
	b := Exponential{Base: 100 * time.Millisecond, Cap: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := b.Ceiling(i + 1); got != w*time.Millisecond {
			t.Errorf("Ceiling(%d) = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	huge := Exponential{Base: time.Second, Cap: 1<<62 - 1}
	for _, n := range []int{0, 63, 64, 1000, 1 << 30} {
		if got := huge.Ceiling(n); got <= 0 || got > huge.Cap {
			t.Errorf("Ceiling(%d) = %v: overflow or beyond cap", n, got)
		}
	}
}

func TestFullJitterBounds(t *testing.T) {
	for _, tc := range []struct {
		r    float64
		n    int
		want time.Duration
	}{
		{0, 1, 0},
		{0.5, 1, 50 * time.Millisecond},
		{0.5, 3, 200 * time.Millisecond},
		{0.25, 10, 250 * time.Millisecond}, // capped window of 1 s
		{1, 2, 0},                          // out-of-range source: no pause beyond the window
		{-3, 2, 0},
	} {
		b := Exponential{Base: 100 * time.Millisecond, Cap: time.Second, Rand: func() float64 { return tc.r }}
		if got := b.FullJitter(tc.n); got != tc.want {
			t.Errorf("FullJitter(n=%d, r=%v) = %v, want %v", tc.n, tc.r, got, tc.want)
		}
	}
	// Just below 1 stays strictly inside the window, for every round.
	b := Exponential{Base: 100 * time.Millisecond, Cap: time.Second, Rand: func() float64 { return 0.999999 }}
	for n := 1; n < 20; n++ {
		if d, c := b.FullJitter(n), b.Ceiling(n); d >= c || d < c*99/100 {
			t.Errorf("FullJitter(%d) = %v, want in [0.99·%v, %v)", n, d, c, c)
		}
	}
}

func TestEqualJitterKeepsAtLeastHalfTheWindow(t *testing.T) {
	for _, tc := range []struct {
		r    float64
		n    int
		want time.Duration
	}{
		{0, 1, 50 * time.Millisecond},
		{0.5, 1, 75 * time.Millisecond},
		{0.5, 3, 300 * time.Millisecond},
		{0.25, 10, 625 * time.Millisecond}, // capped window of 1 s
		{1, 2, 100 * time.Millisecond},     // out-of-range source: the window's floor
	} {
		b := Exponential{Base: 100 * time.Millisecond, Cap: time.Second, Rand: func() float64 { return tc.r }}
		if got := b.EqualJitter(tc.n); got != tc.want {
			t.Errorf("EqualJitter(n=%d, r=%v) = %v, want %v", tc.n, tc.r, got, tc.want)
		}
	}
	// The default source (math/rand/v2) stays in [ceiling/2, ceiling).
	b := Exponential{Base: 100 * time.Millisecond, Cap: time.Second}
	for n := 1; n < 200; n++ {
		if d, c := b.EqualJitter(n%8+1), b.Ceiling(n%8+1); d < c/2 || d >= c {
			t.Errorf("EqualJitter(%d) = %v, want in [%v, %v)", n%8+1, d, c/2, c)
		}
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	if err := Sleep(ctx, 0); err != nil {
		t.Errorf("Sleep(live ctx, 0) = %v, want nil", err)
	}
	if err := Sleep(ctx, time.Millisecond); err != nil {
		t.Errorf("Sleep(live ctx, 1ms) = %v, want nil", err)
	}
	cancel()
	if err := Sleep(ctx, 0); err != context.Canceled {
		t.Errorf("Sleep(cancelled ctx, 0) = %v, want context.Canceled", err)
	}
	// An hour-long sleep returns because ctx already ended; a broken Sleep
	// hangs here until go test's own timeout.
	if err := Sleep(ctx, time.Hour); err != context.Canceled {
		t.Errorf("Sleep(cancelled ctx, 1h) = %v, want context.Canceled", err)
	}
}
