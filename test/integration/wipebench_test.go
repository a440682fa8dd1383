//go:build vmtest

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// wipeRatioTarget is the goal from the image issue: the integrity wipe
// should write at ≥ 90% of the disk's raw write rate. Under TCG the wipe's
// aes-xts + hmac(sha256) run in emulated instructions, so the test reports
// the ratio and does not assert it (no timed thresholds in tests).
const wipeRatioTarget = 0.9

// Both disks are 256 MiB, not the suite's 64 MiB: a 64 MiB disk wipes in
// ~1.2 s, so the window from the first progress report (~1 s in) to the
// end held one 8 MiB block, and dd of 64 MiB took ~160 ms against the
// guest clock's 10 ms steps. 256 MiB costs ~5 s more VM time.
const (
	benchDiskSize = 256 << 20
	rawMiB        = 256
)

// TestWipeThroughputVsRawWrite boots one integrity first boot with a second
// scratch disk. The daemon wipes the state disk through dm-crypt +
// dm-integrity (8 MiB blocks, libcryptsetup's crypt_wipe); after it, the
// init writes rawMiB MiB of zeros to /dev/vdb with dd bs=8M oflag=direct
// (dm.rawbench). Both are timed on the host clock from the serial lines:
// the wipe from its first progress report (~1 s in, done_bytes known) to
// its 100% line, dd from rawbench_start to rawbench (the guest's own dd
// time is printed too).
func TestWipeThroughputVsRawWrite(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinServiceFor(ctx, t, bootOpts{integrity: true})
	n := s.newNode(ctx, t, "wipe-bench")
	_, b := firstBootVM(ctx, t, n, js, bootOpts{label: "first boot, integrity + raw bench", integrity: true,
		diskSize: benchDiskSize, secondDisk: filepath.Join(t.TempDir(), "scratch.img"), secondDiskSize: rawMiB << 20,
		extra: []string{fmt.Sprintf("dm.rawbench=/dev/vdb:%d", rawMiB)}})

	var first, last vmtest.Line
	for _, l := range b.Lines() {
		if l.Msg() != msgWipe || l.Str("total_bytes") == "" {
			continue
		}
		if first.Raw == "" {
			first = l
		}
		last = l
	}
	total, firstDone := jsonUint(last, "total_bytes"), jsonUint(first, "done_bytes")
	if total == 0 || last.Str("done_bytes") != last.Str("total_bytes") || first.Index == last.Index {
		t.Fatalf("need a wipe progress line before the 100%% line; first %s, last %s", first.Raw, last.Raw)
	}
	wipeBytes, wipeDur := total-firstDone, last.At-first.At

	start := b.must(ctx, t, vmtest.Event("rawbench_start"), "rawbench_start")
	raw := b.must(ctx, t, vmtest.Event("rawbench"), "rawbench")
	if raw.Str("ok") != "true" {
		t.Fatalf("raw write failed: %s", raw.Raw)
	}
	rawBytes, guestMs := jsonUint(raw, "bytes"), jsonUint(raw, "ms")
	rawDur := raw.At - start.At
	if rawBytes != rawMiB<<20 || rawDur <= 0 || wipeDur <= 0 {
		t.Fatalf("implausible measurement: raw %d bytes in %v, wipe %d bytes in %v", rawBytes, rawDur, wipeBytes, wipeDur)
	}

	mibps := func(n uint64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
	wipeRate, rawRate := mibps(wipeBytes, wipeDur), mibps(rawBytes, rawDur)
	ratio := wipeRate / rawRate
	report := fmt.Sprintf("integrity wipe: %d of %d bytes in %d ms (host clock, first progress → 100%%) = %.1f MiB/s\n"+
		"raw write /dev/vdb (dd bs=8M oflag=direct): %d bytes in %d ms (host clock; guest /proc/uptime says %d ms) = %.1f MiB/s\n"+
		"wipe / raw = %.3f (target ≥ %.1f)\n",
		wipeBytes, total, wipeDur.Milliseconds(), wipeRate, rawBytes, rawDur.Milliseconds(), guestMs, rawRate, ratio, wipeRatioTarget)
	t.Log("\n" + report)
	if root, err := vmtest.RepoRoot(); err == nil {
		dir := filepath.Join(root, "build", "integration")
		if os.MkdirAll(dir, 0o755) == nil {
			_ = os.WriteFile(filepath.Join(dir, "wipe-throughput.txt"), []byte(report), 0o644)
		}
	}
}

// jsonUint reads a JSON number field (decoded as float64; Str would print
// large ones in exponent form). 0 when absent or not a number.
func jsonUint(l vmtest.Line, key string) uint64 {
	f, err := strconv.ParseFloat(l.Str(key), 64)
	if err != nil || f < 0 {
		return 0
	}
	return uint64(f)
}
