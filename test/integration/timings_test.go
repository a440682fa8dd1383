//go:build vmtest

package integration

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// The suite's measurements, printed as tables after the run (TestMain) and
// written to build/integration/timings.txt, so CI logs show them:
//   - per boot: QEMU start → "Waiting for decryption key" (host clock), and
//     key served (ticket issued on the JoinService, or dmctl started) →
//     "State disk mapped" summary line;
//   - per scenario: wall time.
var timings struct {
	sync.Mutex
	boots     []bootTiming
	scenarios []scenarioTiming
}

type bootTiming struct {
	label          string
	image          string        // "busybox" or "systemd"
	toWaiting      time.Duration // 0 when the boot never waited
	keyServed      string        // "ticket", "dmctl", …
	servedToMapped time.Duration
	toMapped       time.Duration // QEMU start → summary
}

type scenarioTiming struct {
	name   string
	wall   time.Duration
	failed bool
}

// scenario records the test's wall time at its end.
func scenario(t *testing.T) {
	start := time.Now()
	t.Cleanup(func() {
		timings.Lock()
		defer timings.Unlock()
		timings.scenarios = append(timings.scenarios, scenarioTiming{name: t.Name(), wall: time.Since(start), failed: t.Failed()})
	})
}

// recordBoot notes a boot's timings: waiting is the first "Waiting for
// decryption key" line (zero Line if none), summary the "summary" line,
// served the host time the key was handed out (zero if not known).
func recordBoot(t *testing.T, b *boot, waiting, summary vmtest.Line, how string, served time.Time) {
	bt := bootTiming{label: b.label, image: b.imageName(), keyServed: how, toMapped: summary.At}
	if waiting.Raw != "" {
		bt.toWaiting = waiting.At
	}
	if !served.IsZero() {
		bt.servedToMapped = b.hostTime(summary).Sub(served)
	}
	t.Logf("timing %s: QEMU→waiting %v, %s→mapped %v, QEMU→mapped %v", bt.label,
		bt.toWaiting.Round(time.Millisecond), how, bt.servedToMapped.Round(time.Millisecond), bt.toMapped.Round(time.Millisecond))
	timings.Lock()
	timings.boots = append(timings.boots, bt)
	timings.Unlock()
}

func printTimings(stdout io.Writer) {
	timings.Lock()
	defer timings.Unlock()
	if len(timings.boots) == 0 && len(timings.scenarios) == 0 {
		return
	}
	var b strings.Builder
	ms := func(d time.Duration) string {
		if d == 0 {
			return "-"
		}
		return fmt.Sprintf("%d", d.Milliseconds())
	}
	fmt.Fprintf(&b, "\n== integration timings (host clock, TCG) ==\n")
	fmt.Fprintf(&b, "%-44s %-8s %14s %-7s %16s %14s\n", "boot", "image", "QEMU→waiting", "key by", "served→mapped", "QEMU→mapped")
	for _, bt := range timings.boots {
		fmt.Fprintf(&b, "%-44s %-8s %12sms %-7s %14sms %12sms\n", bt.label, bt.image, ms(bt.toWaiting), bt.keyServed, ms(bt.servedToMapped), ms(bt.toMapped))
	}
	printImageColumns(&b, timings.boots)
	sc := append([]scenarioTiming(nil), timings.scenarios...)
	sort.SliceStable(sc, func(i, j int) bool { return false })
	var total time.Duration
	fmt.Fprintf(&b, "\n%-52s %10s\n", "scenario", "wall")
	for _, s := range sc {
		status := ""
		if s.failed {
			status = "  FAILED"
		}
		total += s.wall
		fmt.Fprintf(&b, "%-52s %8.1fs%s\n", s.name, s.wall.Seconds(), status)
	}
	fmt.Fprintf(&b, "%-52s %8.1fs\n", "total", total.Seconds())
	fmt.Fprint(stdout, b.String())
	if root, err := vmtest.RepoRoot(); err == nil {
		dir := filepath.Join(root, "build", "integration")
		if os.MkdirAll(dir, 0o755) == nil {
			_ = os.WriteFile(filepath.Join(dir, "timings.txt"), []byte(b.String()), 0o644)
		}
	}
}
