//go:build vmtest

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// TestMeasureBootPhases is a measurement, not a check: where the time from
// QEMU's start to "Waiting for decryption key" goes on a rejoin boot of the
// busybox image (DESIGN.md §8: ≤ 4 s). It prints, for every line up to the
// waiting line, the median (min–max) host time since QEMU started, over
// DM_VM_BENCH_RUNS boots (default 10). Only with DM_VM_BENCH=1.
// DM_VM_BENCH_EXTRA (space-separated kernel parameters) adds a second
// variant, booted interleaved with the first, to try a tuning under the
// same machine load.
func TestMeasureBootPhases(t *testing.T) {
	ctx, js, n := startMeasurement(t, "node-phases")

	runs := benchRuns()
	variants := [][]string{nil}
	if extra := strings.Fields(os.Getenv("DM_VM_BENCH_EXTRA")); len(extra) > 0 {
		variants = append(variants, extra)
	}
	at := make([]map[string][]time.Duration, len(variants)) // phase → host time since QEMU start
	for run := range runs {
		for v, extra := range variants {
			if at[v] == nil {
				at[v] = map[string][]time.Duration{}
			}
			b := n.boot(ctx, t, bootOpts{label: fmt.Sprintf("phases %v #%d", extra, run), peers: []peer{js.peer()}, extra: extra})
			b.mustMsg(ctx, t, "Waiting for decryption key")
			seen := map[string]bool{}
			for _, l := range b.Lines() {
				name := phaseName(l)
				if seen[name] {
					continue
				}
				seen[name] = true
				at[v][name] = append(at[v][name], l.At)
				if l.Msg() == "Waiting for decryption key" {
					break
				}
			}
			// Only the way to the waiting line is measured: a variant's
			// command line changes PCR 12, so its JoinService would refuse
			// it; the key is never needed and the disk is not touched.
			if err := b.Kill(); err != nil {
				t.Fatalf("%s: stopping QEMU: %v", b.label, err)
			}
			_ = b.Wait()
		}
	}

	var out strings.Builder
	for v, extra := range variants {
		type phase struct {
			name string
			v    []time.Duration
		}
		var phases []phase
		for name, d := range at[v] {
			phases = append(phases, phase{name, sortedDur(d)})
		}
		sort.Slice(phases, func(i, j int) bool { return medianDur(phases[i].v) < medianDur(phases[j].v) })
		fmt.Fprintf(&out, "VM boot phases, busybox image, rejoin boot, extra kernel parameters %q (%d runs; host ms since QEMU start; load %s)\n",
			strings.Join(extra, " "), runs, loadAverage())
		fmt.Fprintf(&out, "%-70s | %s\n", "first line of", "median (min – max), n")
		for _, p := range phases {
			fmt.Fprintf(&out, "%-70s | %6.0f (%5.0f – %5.0f), %d\n", p.name, ms(medianDur(p.v)), ms(minDur(p.v)), ms(maxDur(p.v)), len(p.v))
		}
	}
	t.Log("\n" + out.String())
	fmt.Print(out.String())
	_ = os.MkdirAll(filepath.Join("..", "..", "build", "bench"), 0o755)
	_ = os.WriteFile(filepath.Join("..", "..", "build", "bench", "vm-boot-phases.txt"), []byte(out.String()), 0o644)
}

// phaseName names a line by its logger and event (dm-measure lines also by
// what they measured).
func phaseName(l vmtest.Line) string {
	name := l.Str("logger") + " " + l.Event()
	if l.Str("logger") == "dm-measure" {
		name += " " + l.Str("kind")
	}
	if m := l.Msg(); m != "" {
		name += " (" + m + ")"
	}
	return strings.TrimSpace(name)
}
