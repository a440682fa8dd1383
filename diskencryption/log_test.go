package diskencryption

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

func TestRouteLibraryLog(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	RouteLibraryLog(zap.New(core))
	t.Cleanup(func() { RouteLibraryLog(nil) })

	// libcryptsetup explains (at its debug level) why it cannot load a
	// zero file; any message will do.
	if _, err := Open(newDisk(t, testDiskSize)); err == nil {
		t.Fatal("Open of a zero file succeeded")
	}
	entries := logs.FilterField(logging.Event("libcryptsetup")).All()
	if len(entries) == 0 {
		t.Fatal("no libcryptsetup message reached the logger")
	}
	for _, e := range entries {
		if e.Level != zapcore.DebugLevel {
			t.Fatalf("libcryptsetup message at %v, want debug", e.Level)
		}
	}

	// An info-level logger gets nothing: the library is silenced.
	infoCore, infoLogs := observer.New(zapcore.InfoLevel)
	RouteLibraryLog(zap.New(infoCore))
	if _, err := Open(newDisk(t, testDiskSize)); err == nil {
		t.Fatal("Open of a zero file succeeded")
	}
	if n := infoLogs.Len(); n != 0 {
		t.Fatalf("%d lines at info level, want none", n)
	}
}

func TestWipeReporter(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	var calls [][2]uint64
	w := newWipeReporter(100, FormatOptions{
		Progress: func(done, total uint64) { calls = append(calls, [2]uint64{done, total}) },
		Logger:   zap.New(core),
	})
	for off := uint64(10); off < 100; off += 10 {
		w.callback(100, off) // the first is reported at once, the rest within a second: throttled
	}
	if len(calls) != 1 || calls[0] != [2]uint64{10, 100} {
		t.Fatalf("progress calls within the first second = %v, want only the first block", calls)
	}
	w.last = w.last.Add(-2 * time.Second)
	w.callback(100, 95)
	w.finish()
	if len(calls) != 3 || calls[1] != [2]uint64{95, 100} || calls[2] != [2]uint64{100, 100} {
		t.Fatalf("progress calls = %v", calls)
	}
	if n := logs.FilterField(logging.Event("integrity_wipe_done")).Len(); n != 1 {
		t.Fatalf("%d wipe-done log lines, want 1", n)
	}
}
