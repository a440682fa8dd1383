package rejoinclient

import (
	"testing"
	"time"
)

// Pure logic; TestServeRoundsRepeatWithRediscovery covers backoff between
// real rounds.
func TestBackoffCeilingDoublesUpToCap(t *testing.T) {
	b := backoff{base: 100 * time.Millisecond, cap: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := b.ceiling(i + 1); got != w*time.Millisecond {
			t.Errorf("ceiling(%d) = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	huge := backoff{base: time.Second, cap: 1<<62 - 1}
	for _, n := range []int{0, 63, 64, 1000, 1 << 30} {
		if got := huge.ceiling(n); got <= 0 || got > huge.cap {
			t.Errorf("ceiling(%d) = %v: overflow or beyond cap", n, got)
		}
	}
}

func TestBackoffFullJitterBounds(t *testing.T) {
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
		b := backoff{base: 100 * time.Millisecond, cap: time.Second, rand: func() float64 { return tc.r }}
		if got := b.delay(tc.n); got != tc.want {
			t.Errorf("delay(n=%d, r=%v) = %v, want %v", tc.n, tc.r, got, tc.want)
		}
	}
	// Just below 1 stays strictly inside the window, for every round.
	b := backoff{base: 100 * time.Millisecond, cap: time.Second, rand: func() float64 { return 0.999999 }}
	for n := 1; n < 20; n++ {
		if d, c := b.delay(n), b.ceiling(n); d >= c || d < c*99/100 {
			t.Errorf("delay(%d) = %v, want in [0.99·%v, %v)", n, d, c, c)
		}
	}
}

func TestNewFillsDefaults(t *testing.T) {
	c := New(Config{BackoffBase: time.Minute, BackoffCap: time.Second})
	if c.attemptTimeout != DefaultAttemptTimeout || c.stagger != DefaultStagger || c.rand == nil || c.log == nil {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.backoff.cap < c.backoff.base {
		t.Errorf("cap %v below base %v", c.backoff.cap, c.backoff.base)
	}
	if c.Name() != "RejoinClient" {
		t.Errorf("Name = %q", c.Name())
	}
}

// TestScheduleShufflesAndDefersHintedEndpoints: pure ordering logic; the
// real-server test TestServeResourceExhaustedHonoursRetryInfo covers hints.
func TestScheduleShufflesAndDefersHintedEndpoints(t *testing.T) {
	c := New(Config{AttemptTimeout: time.Second, Rand: func() float64 { return 0 }})
	eps := []string{"a", "b", "c", "d"}
	// Fisher–Yates with j = 0 every step rotates the list left by one.
	if got := c.schedule(eps); !equal(got, []string{"b", "c", "d", "a"}) {
		t.Errorf("shuffled = %v", got)
	}
	c.cfg.KeepOrder = true
	now := time.Now()
	c.notBefore = map[string]time.Time{
		"a": now.Add(500 * time.Millisecond), // within one attempt timeout: last
		"b": now.Add(time.Hour),              // beyond: sits the round out
		"c": now.Add(-time.Second),           // expired: forgotten
	}
	if got := c.schedule(eps); !equal(got, []string{"c", "d", "a"}) {
		t.Errorf("scheduled = %v, want [c d a]", got)
	}
	if _, ok := c.notBefore["c"]; ok {
		t.Error("expired hint kept")
	}
	if d := c.earliestHint(); d < 400*time.Millisecond || d > 500*time.Millisecond {
		t.Errorf("earliestHint = %v", d)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
