package faults

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/setup"
	"google.golang.org/grpc/status"
)

// Disk faults (issue item 1): only a provably blank disk, or one of ours
// that never reached "initialized", is ever (re)formatted; everything else is
// refused with a clear log line while the recovery listener stays up.

const refusedMsg = "Refusing state disk; waiting for an operator"

// refusedWith reports whether a push was answered as a refused disk should
// be: FailedPrecondition "state disk refused: <reason>".
func refusedWith(err error, reason string) bool {
	return code(err) == "FailedPrecondition" && status.Convert(err).Message() == "state disk refused: "+reason
}

func anyKey(t testing.TB) func(string) []byte {
	return func(string) []byte { return randomKey(t) }
}

// expectRefused runs a node on path and checks the refusal: the node logs
// why, its RecoveryServer answers two pushes with FailedPrecondition "state
// disk refused: <reason>" (it stays up; never "malformed key"), it never
// formats, and not one byte of the disk changes.
func expectRefused(t *testing.T, name, path string) {
	t.Helper()
	before := readAll(t, path)
	n := startNode(t, path)
	st := n.waitStarted(t)
	secret, key := randomKey(t), randomKey(t)
	_, err1 := pushKey(st.addr, operatorCreds(t, nil), secret, nil, key)
	_, err2 := pushKey(st.addr, operatorCreds(t, nil), secret, nil, key)
	runErr := n.stop(t)
	after := readAll(t, path)

	reason := field(n.logs, refusedMsg, "reason")
	formats := n.logs.count("Preparing new state disk")
	got := fmt.Sprintf("refused: %s; pushes %s,%s; formats %d", reason, code(err1), code(err2), formats)
	survived := st.mode == setup.ModeRefused && reason != "" &&
		refusedWith(err1, reason) && refusedWith(err2, reason) &&
		formats == 0 && errors.Is(runErr, setup.ErrRefused)
	record(t, outcome{Case: "disk: " + name, Expected: "refused, listener up, untouched", Got: got,
		Survived: survived, DataLost: changedBytes(before, after, 0)})
}

// expectFormatted runs a node on a disk that may be (re)formatted: it must
// be formatted afresh, take an operator's key (blank-disk mode) and enrol
// it; on the host the unlock then stops at Activate (no device-mapper).
func expectFormatted(t *testing.T, name, path, oldUUID string) {
	t.Helper()
	before := readAll(t, path)
	n := startNode(t, path)
	st := n.waitStarted(t)
	probe, perr := diskencryption.ProbeDevice(path)
	secret, salt, key := randomKey(t), randomKey(t), randomKey(t)
	uuid, pushErr := pushKey(st.addr, operatorCreds(t, nil), secret, salt, key)
	runErr := n.wait(t)
	after := readAll(t, path)

	keyOpens := checkKey(path, key)
	final, _ := diskencryption.ProbeDevice(path)
	got := fmt.Sprintf("formatted %s (state %s, new uuid %v); push %s; enrolled key opens: %v; final state %s; run: %v",
		probe.Kind, probe.State, probe.UUID != oldUUID, code(pushErr), keyOpens == nil, final.State, shortErr(runErr))
	survived := perr == nil && st.mode == setup.ModeBlank && probe.Kind == diskencryption.KindLUKS2 &&
		probe.State == diskencryption.StateFormatting && probe.UUID != oldUUID && uuid == probe.UUID &&
		pushErr == nil && keyOpens == nil && final.State == diskencryption.StateKeyed &&
		runErr != nil && strings.Contains(runErr.Error(), "mapping state disk")
	record(t, outcome{Case: "disk: " + name, Expected: "formatted, key enrolled (stops at Activate on host)", Got: got,
		Survived: survived, DataLost: changedBytes(before, after, headerRegion)})
}

// expectUnlocked runs a node on an initialized disk of ours: a wrong key is
// refused, the right one wins; on the host the unlock stops at Activate.
// Every byte after the header region must be unchanged.
func expectUnlocked(t *testing.T, name string, d ourDisk, before []byte, prepare func(n *node)) {
	t.Helper()
	if before == nil {
		before = readAll(t, d.path)
	}
	if prepare == nil {
		prepare = func(*node) {}
	}
	n := startNode(t, d.path)
	prepare(n)
	st := n.waitStarted(t)
	if st.mode == setup.ModeRefused && st.uuid == "" { // the listener of a node still waiting for its disk
		st = n.waitStarted(t)
	}
	secret := randomKey(t)
	_, wrongErr := pushKey(st.addr, operatorCreds(t, nil), secret, nil, randomKey(t))
	uuid, rightErr := pushKey(st.addr, operatorCreds(t, nil), secret, nil, d.key)
	runErr := n.wait(t)
	after := readAll(t, d.path)
	final, _ := diskencryption.ProbeDevice(d.path)

	got := fmt.Sprintf("existing (uuid kept %v); wrong key %s; right key %s; formats %d; final %s/%s; run: %v",
		uuid == d.uuid, code(wrongErr), code(rightErr), n.logs.count("Preparing new state disk"), final.Kind, final.State, shortErr(runErr))
	survived := st.mode == setup.ModeExisting && uuid == d.uuid && code(wrongErr) == "PermissionDenied" && rightErr == nil &&
		n.logs.count("Preparing new state disk") == 0 && final.State == diskencryption.StateInitialized &&
		runErr != nil && strings.Contains(runErr.Error(), "mapping state disk") && checkKey(d.path, d.key) == nil
	record(t, outcome{Case: "disk: " + name, Expected: "unlocked, never formatted (stops at Activate on host)", Got: got,
		Survived: survived, DataLost: changedBytes(before, after, headerRegion)})
}

func checkKey(path string, key []byte) error {
	d, err := diskencryption.Open(path)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.CheckKey(key)
}

func shortErr(err error) string {
	if err == nil {
		return "ok"
	}
	s := err.Error()
	if i := strings.Index(s, "mapping state disk"); i >= 0 {
		return "stopped at " + s[i:]
	}
	return s
}

func TestDiskBlank(t *testing.T) {
	expectFormatted(t, "blank", newBlankFile(t, diskSize), "")
}

func TestDiskOursNeverInitialized(t *testing.T) {
	for _, state := range []diskencryption.State{diskencryption.StateFormatting, diskencryption.StateKeyed} {
		t.Run(string(state), func(t *testing.T) {
			d := newOurDisk(t, state, anyKey(t))
			expectFormatted(t, "ours, "+string(state)+" (never initialized)", d.path, d.uuid)
		})
	}
}

func TestDiskOursInitialized(t *testing.T) {
	expectUnlocked(t, "ours, initialized (control)", newOurDisk(t, diskencryption.StateInitialized, anyKey(t)), nil, nil)
}

func TestDiskPrimaryHeaderCorrupted(t *testing.T) {
	d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	corruptHeaderCopy(t, d.path, 0)
	expectUnlocked(t, "primary LUKS2 header corrupted, secondary intact", d, nil, nil)
}

func TestDiskSecondaryHeaderCorrupted(t *testing.T) {
	d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	corruptHeaderCopy(t, d.path, testutil.LUKS2HeaderSize(t, d.path))
	expectUnlocked(t, "secondary LUKS2 header corrupted, primary intact", d, nil, nil)
}

func TestDiskBothHeadersCorrupted(t *testing.T) {
	d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	corruptHeaderCopy(t, d.path, 0)
	corruptHeaderCopy(t, d.path, testutil.LUKS2HeaderSize(t, d.path))
	expectRefused(t, "both LUKS2 headers corrupted", d.path)
}

func TestDiskWeakenedHeader(t *testing.T) {
	cases := map[string]func(map[string]any){
		"segment cipher swapped to cipher_null": func(m map[string]any) {
			section(m, "segments", "0")["encryption"] = "cipher_null-ecb"
		},
		"keyslot area cipher swapped": func(m map[string]any) {
			section(m, "keyslots", "")["area"].(map[string]any)["encryption"] = "aes-cbc-essiv:sha256"
		},
		"digest removed": func(m map[string]any) {
			m["digests"] = map[string]any{}
		},
		"second digest added": func(m map[string]any) {
			dig := section(m, "digests", "")
			dup := map[string]any{}
			for k, v := range dig {
				dup[k] = v
			}
			m["digests"].(map[string]any)["1"] = dup
		},
		"keyslot KDF iterations lowered to 1": func(m map[string]any) {
			section(m, "keyslots", "")["kdf"].(map[string]any)["iterations"] = 1
		},
		"state token removed": func(m map[string]any) {
			m["tokens"] = map[string]any{}
		},
	}
	for name, edit := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
			testutil.RewriteLUKS2HeaderJSON(t, d.path, edit)
			expectRefused(t, "weakened header: "+name, d.path)
		})
	}
}

func TestDiskForeign(t *testing.T) {
	cases := map[string]func(t *testing.T) string{
		"ext4 file system":            func(t *testing.T) string { return makeExt4(t) },
		"GPT partition table":         func(t *testing.T) string { return makeGPT(t) },
		"DOS partition table":         func(t *testing.T) string { return makeMBR(t) },
		"LUKS2 not ours (cryptsetup)": func(t *testing.T) string { return makeCLILUKS2(t, randomKey(t)) },
		"random bytes at 1 MiB - 1": func(t *testing.T) string {
			p := newBlankFile(t, diskSize)
			testutil.WriteAt(t, p, mib-1, []byte{0x01})
			return p
		},
		"data only in the last MiB": func(t *testing.T) string {
			p := newBlankFile(t, diskSize)
			testutil.WriteAt(t, p, diskSize-mib+100, testutil.RandomBytes(t, 64))
			return p
		},
	}
	for name, mk := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			expectRefused(t, "foreign: "+name, mk(t))
		})
	}
}

func TestDiskTruncated(t *testing.T) {
	t.Run("below_minimum", func(t *testing.T) {
		d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
		if err := os.Truncate(d.path, 24*mib); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, "ours, initialized, truncated to 24 MiB (< minimum)", d.path)
	})
	t.Run("header_only", func(t *testing.T) {
		d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
		if err := os.Truncate(d.path, 1*mib); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, "ours, initialized, truncated to 1 MiB", d.path)
	})
	t.Run("above_minimum", func(t *testing.T) {
		d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
		if err := os.Truncate(d.path, 33*mib); err != nil {
			t.Fatal(err)
		}
		expectUnlocked(t, "ours, initialized, truncated to 33 MiB", d, nil, nil)
	})
}

func TestDiskMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.img")
	n := startNode(t, path)
	// Let the node wait through a few reminders (ReminderInterval 200 ms).
	deadline := time.Now().Add(hangGuard)
	for n.logs.count("Waiting for state disk") < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	var listener started
	select {
	case listener = <-n.started:
	default:
	}
	_, pushErr := pushKey(listener.addr, operatorCreds(t, nil), randomKey(t), nil, randomKey(t))
	runErr := n.stop(t)
	_, statErr := os.Stat(path)
	waits := n.logs.count("Waiting for state disk")
	got := fmt.Sprintf("waiting (%d reminders), listener mode %v uuid %q, push %s, disk created %v, run: %v",
		waits, listener.mode, listener.uuid, code(pushErr), statErr == nil, shortErr(runErr))
	survived := waits >= 3 && listener.addr != "" && listener.mode == setup.ModeRefused && refusedWith(pushErr, "no state disk") &&
		os.IsNotExist(statErr) && errors.Is(runErr, context.Canceled)
	// Nothing exists to lose: count what the node created where no disk was.
	created := int64(0)
	if statErr == nil {
		created = int64(len(readAll(t, path)))
	}
	record(t, outcome{Case: "disk: no state disk at all", Expected: "waits and says so, listener up refusing pushes, creates nothing", Got: got,
		Survived: survived, DataLost: created})
}

func TestDiskAppearsLate(t *testing.T) {
	d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	late := filepath.Join(t.TempDir(), "late.img")
	moved := d
	moved.path = late
	expectUnlocked(t, "ours, initialized, appears 600 ms late", moved, readAll(t, d.path), func(n *node) {
		go func() {
			time.Sleep(600 * time.Millisecond)
			// A device node appears whole: rename, never a growing file.
			_ = os.Rename(d.path, late)
		}()
	})
}

// TestDataLossIsMeasured proves the data-lost column can be non-zero: a
// node that wrongly reformatted an initialized disk would be caught.
func TestDataLossIsMeasured(t *testing.T) {
	d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	before := readAll(t, d.path)
	re, err := diskencryption.Format(d.path, diskencryption.FormatOptions{}, randomKey(t))
	if err != nil {
		t.Fatal(err)
	}
	re.Close()
	testutil.WriteAt(t, d.path, headerRegion, make([]byte, 4096)) // what mkfs would do
	if lost := changedBytes(before, readAll(t, d.path), headerRegion); lost == 0 {
		t.Fatal("overwriting the data area of an initialized disk was not counted as data lost")
	}
}
