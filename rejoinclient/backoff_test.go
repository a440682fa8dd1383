package rejoinclient

import (
	"slices"
	"testing"
	"time"
)

func TestNewFillsDefaults(t *testing.T) {
	c := New(Config{BackoffBase: time.Minute, BackoffCap: time.Second})
	if c.attemptTimeout != DefaultAttemptTimeout || c.stagger != DefaultStagger || c.rand == nil || c.log == nil {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.backoff.Cap < c.backoff.Base {
		t.Errorf("cap %v below base %v", c.backoff.Cap, c.backoff.Base)
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
	if got := c.schedule(eps); !slices.Equal(got, []string{"b", "c", "d", "a"}) {
		t.Errorf("shuffled = %v", got)
	}
	c.cfg.KeepOrder = true
	now := time.Now()
	c.notBefore = map[string]time.Time{
		"a": now.Add(500 * time.Millisecond), // within one attempt timeout: last
		"b": now.Add(time.Hour),              // beyond: sits the round out
		"c": now.Add(-time.Second),           // expired: forgotten
	}
	if got := c.schedule(eps); !slices.Equal(got, []string{"c", "d", "a"}) {
		t.Errorf("scheduled = %v, want [c d a]", got)
	}
	if _, ok := c.notBefore["c"]; ok {
		t.Error("expired hint kept")
	}
	if d := c.earliestHint(); d < 400*time.Millisecond || d > 500*time.Millisecond {
		t.Errorf("earliestHint = %v", d)
	}
}
