//go:build vmtest

package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMeasureTimeToKeyWithDeadEndpoints is a measurement, not a check: it
// prints how much dead JoinService endpoints beside a healthy one delay the
// key in the VM (DESIGN.md §8: ≤ 1.5× healthy-only), and asserts nothing
// about time. It runs only with DM_VM_BENCH=1 (`make bench-vm`), since it
// boots the node DM_VM_BENCH_RUNS (default 10) × 5 times.
//
// The dead endpoints come in two kinds, so the cause of a slowdown shows:
//   - silent: guestfwd to a host listener that accepts and never answers;
//     slirp forks a helper process per connection (QEMU's main loop), and
//     the guest sends a ClientHello;
//   - blackhole: a virtual address with no forward; restrict=on drops the
//     SYN, so the guest only dials;
//   - closed: guestfwd to a closed host port; the helper's connect is
//     refused, so the guest's connection opens and then ends at once.
func TestMeasureTimeToKeyWithDeadEndpoints(t *testing.T) {
	ctx, js, n := startMeasurement(t, "node-bench")

	silent := func(i int) peer {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return peer{name: fmt.Sprintf("cp-silent-%d", i), vpcIP: fmt.Sprintf("10.0.2.%d", 110+i), hostPort: l.Addr().(*net.TCPAddr).Port}
	}
	closed := func(i int) peer {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		return peer{name: fmt.Sprintf("cp-closed-%d", i), vpcIP: fmt.Sprintf("10.0.2.%d", 130+i), hostPort: port}
	}
	blackhole := func(i int) peer {
		return peer{name: fmt.Sprintf("cp-hole-%d", i), vpcIP: fmt.Sprintf("10.0.2.%d", 120+i)}
	}
	configs := []struct {
		name  string
		peers func() []peer
	}{
		{"healthy only", func() []peer { return nil }},
		{"+3 silent (guestfwd)", func() []peer { return []peer{silent(0), silent(1), silent(2)} }},
		{"+3 blackholed (no forward)", func() []peer { return []peer{blackhole(0), blackhole(1), blackhole(2)} }},
		{"+2 closed (guestfwd, refused)", func() []peer { return []peer{closed(0), closed(1)} }},
		{"+5 dead (3 silent, 2 closed)", func() []peer { return append([]peer{silent(3), silent(4), silent(5)}, deadPeers(t)...) }},
	}
	runs := benchRuns()
	attempt := map[string][]time.Duration{} // the healthy attempt, guest clock
	toKey := map[string][]time.Duration{}   // first request → ticket accepted, host clock
	for run := range runs {
		for _, c := range configs { // interleaved: load drifts hit every config alike
			b := n.boot(ctx, t, bootOpts{label: fmt.Sprintf("bench %s #%d", c.name, run), peers: append(c.peers(), js.peer())})
			first := b.mustMsg(ctx, t, "Requesting rejoin ticket")
			acc := b.mustMsg(ctx, t, "Rejoin ticket accepted")
			d, err := time.ParseDuration(acc.Str("duration"))
			if err != nil {
				t.Fatalf("%s: duration %q: %v", b.label, acc.Str("duration"), err)
			}
			attempt[c.name] = append(attempt[c.name], d)
			toKey[c.name] = append(toKey[c.name], acc.At-first.At)
			b.finish(ctx, t)
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "VM time to key with dead endpoints (%d runs each, interleaved; load %s)\n", runs, loadAverage())
	fmt.Fprintf(&out, "%-30s | %-33s | %-34s | %s\n", "config", "healthy attempt ms (med, min–max)", "request→accepted ms (med, min–max)", "÷ healthy-only, per run (med, min–max; ≤ 1.5)")
	base := toKey[configs[0].name]
	for _, c := range configs {
		a, k := attempt[c.name], toKey[c.name]
		// Each run against the healthy-only boot of the same run: the
		// interleaving makes them neighbours in time.
		var perRun []float64
		for i := range k {
			perRun = append(perRun, float64(k[i])/float64(base[i]))
		}
		sort.Float64s(perRun)
		fmt.Fprintf(&out, "%-30s | %6.0f (%4.0f – %4.0f)              | %6.0f (%4.0f – %4.0f)               | %.2f (%.2f – %.2f)\n", c.name,
			ms(medianDur(a)), ms(minDur(a)), ms(maxDur(a)), ms(medianDur(k)), ms(minDur(k)), ms(maxDur(k)),
			perRun[len(perRun)/2], perRun[0], perRun[len(perRun)-1])
	}
	t.Log("\n" + out.String())
	fmt.Print(out.String())
	_ = os.MkdirAll(filepath.Join("..", "..", "build", "bench"), 0o755)
	_ = os.WriteFile(filepath.Join("..", "..", "build", "bench", "vm-dead-endpoints.txt"), []byte(out.String()), 0o644)
}

// startMeasurement begins a VM measurement: skipped unless DM_VM_BENCH=1,
// then a JoinService and one node, booted once to format its disk.
func startMeasurement(t *testing.T, name string) (context.Context, *joinService, *node) {
	t.Helper()
	if os.Getenv("DM_VM_BENCH") != "1" {
		t.Skip("a measurement: DM_VM_BENCH=1 (make bench-vm) runs it")
	}
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t)
	n := s.newNode(ctx, t, name)
	firstBoot(ctx, t, n, js, bootOpts{})
	return ctx, js, n
}

// benchRuns is DM_VM_BENCH_RUNS, default 10: how often a VM measurement
// boots each configuration.
func benchRuns() int {
	if v, err := strconv.Atoi(os.Getenv("DM_VM_BENCH_RUNS")); err == nil && v > 0 {
		return v
	}
	return 10
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func sortedDur(v []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}
func medianDur(v []time.Duration) time.Duration { s := sortedDur(v); return s[len(s)/2] }
func minDur(v []time.Duration) time.Duration    { return sortedDur(v)[0] }
func maxDur(v []time.Duration) time.Duration    { s := sortedDur(v); return s[len(s)-1] }

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}
