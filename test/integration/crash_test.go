//go:build vmtest

package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// The VM crash matrix: power loss (vm.Kill: SIGKILL to QEMU, no guest
// shutdown) at points of the first boot and of later boots, each followed by
// a boot that must converge. The kill points come from the serial log lines
// (setup/blank.go, setup/existing.go, diskencryption's wipe via
// setup.wipeProgress) and, where no line marks a step, from the LUKS2 header
// the host reads in the disk file. A kill lands a few ms after the host read
// the trigger (TCG keeps running meanwhile); after each kill the host probes
// the disk file read-only (diskencryption.ProbeDevice, the daemon's own first
// step), and the row says what the kill left, so the window it landed in is
// known, not assumed. TestPowerLossDuringFirstFormat already covers a plain
// disk killed at "Preparing new state disk", "State disk formatted" and
// "Waiting for decryption key"; these cases do not repeat them.

const (
	msgPreparingNew      = "Preparing new state disk"
	msgPreparingExisting = "Preparing existing state disk"
	msgResumeFormat      = "State disk was never initialized, formatting it again"
	msgWipe              = "Wiping state disk for integrity"
)

// await is WaitFor with the error named, for cases that record a row
// instead of failing at once.
func await(ctx context.Context, b *boot, p vmtest.Predicate, what string) (vmtest.Line, error) {
	l, err := b.WaitFor(ctx, p)
	if err != nil {
		return l, fmt.Errorf("%s: %w", what, err)
	}
	return l, nil
}

// killTrigger waits for the moment to pull the plug and says what it saw.
type killTrigger func(ctx context.Context, b *boot) (string, error)

func onLine(p vmtest.Predicate, what string) killTrigger {
	return func(ctx context.Context, b *boot) (string, error) {
		l, err := await(ctx, b, p, what)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s (+%dms)", what, l.At.Milliseconds()), nil
	}
}

// onHeaderState polls the LUKS2 header in the disk file until our token says
// state. It marks steps that log no line (SetState(keyed) → activate, mkfs,
// node-state write). Polling a 64 KiB pread from the page cache every 2 ms
// costs the TCG guest next to nothing; it waits on a condition, not a time.
func onHeaderState(state string) killTrigger {
	return func(ctx context.Context, b *boot) (string, error) {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			if headerState(b.node.disk) == state {
				return fmt.Sprintf("host saw header state %q (+%dms)", state, time.Since(b.qemuStart).Milliseconds()), nil
			}
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-b.Done():
				return "", fmt.Errorf("the VM exited before the header said %q", state)
			case <-tick.C:
			}
		}
	}
}

// wipeLine matches the integrity wipe's progress lines; final selects the
// 100% line or the ones before it.
func wipeLine(final bool) vmtest.Predicate {
	return func(l vmtest.Line) bool {
		if l.Msg() != msgWipe || l.Str("total_bytes") == "" {
			return false
		}
		return (l.Str("done_bytes") == l.Str("total_bytes")) == final
	}
}

// firstBootKill is one power loss during a node's first boot.
type firstBootKill struct {
	name      string
	integrity bool
	at        killTrigger
	// window is where the kill lands, as far as the log and the header
	// can tell; the probe after the kill is recorded beside it.
	window string
	// beforeEnrol: the cluster key cannot have been enrolled yet, so the
	// disk must come back never-initialized.
	beforeEnrol bool
}

// TestCrashDuringFirstBoot extends TestPowerLossDuringFirstFormat: kills
// during the integrity format and wipe, during enrolment and the node-state
// write, and right after initialization. An interrupted never-initialized
// disk must be formatted again and reach initialized; a disk that reached
// initialized must be unlocked, never reformatted.
func TestCrashDuringFirstBoot(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	// A JoinService accepts one node configuration: one per integrity setting.
	jsFor := map[bool]*joinService{false: s.startJoinService(ctx, t), true: s.startJoinServiceFor(ctx, t, bootOpts{integrity: true})}
	for _, c := range []firstBootKill{
		{name: "integrity/preparing", integrity: true, beforeEnrol: true,
			at:     onLine(vmtest.Msg(msgPreparingNew), "Preparing new state disk"),
			window: "format start: marker, crypt_format with the dm-integrity format"},
		{name: "integrity/wipe-in-progress", integrity: true, beforeEnrol: true,
			at:     onLine(wipeLine(false), "first wipe progress line (<100%)"),
			window: "mid-wipe (the first progress report comes ~1 s in)"},
		{name: "integrity/wipe-100%", integrity: true, beforeEnrol: true,
			at:     onLine(wipeLine(true), "wipe 100% line"),
			window: "wipe written; wipe mapping still up, header not reloaded"},
		{name: "integrity/formatted", integrity: true, beforeEnrol: true,
			at:     onLine(vmtest.Msg("State disk formatted"), "State disk formatted"),
			window: "after Format, key sources starting (state formatting)"},
		// The enrolment follows "Disk key accepted" within a few ms under
		// TCG: the kill lands just before or inside EnrollKey/SetState(keyed);
		// the probe says which (in every run so far: "formatting", 1 keyslot,
		// i.e. before SetState(keyed); whether EnrollKey had already swapped
		// the keyslot is not visible: add-then-destroy leaves 1 either way,
		// 2 only between the two).
		{name: "plain/key-accepted",
			at:     onLine(vmtest.Msg("Disk key accepted"), "Disk key accepted"),
			window: "enrolment (EnrollKey, SetState keyed) or just before it"},
		// No line marks activate → mkfs → node-state write: the host
		// watches the primary header's JSON turn "keyed" and kills then.
		// Either the kill lands after SetState(keyed), in activate, mkfs or
		// the node-state write (probe: "keyed"), or it lands inside that
		// very header write (the JSON area is on disk, the binary header or
		// the secondary copy not yet: libcryptsetup falls back to the valid
		// "formatting" copy; probe: "formatting"). Both were seen; both
		// must converge.
		{name: "plain/header-keyed",
			at:     onHeaderState("keyed"),
			window: "after SetState(keyed): activate, mkfs, node-state write"},
		{name: "integrity/header-keyed", integrity: true,
			at:     onHeaderState("keyed"),
			window: "after SetState(keyed): activate (journal), mkfs, node-state write"},
		// The node state is written and the token says initialized; PCR 15
		// is not marked yet.
		{name: "plain/initialized",
			at:     onLine(vmtest.Msg("State disk initialized"), "State disk initialized"),
			window: "after SetState(initialized), before the PCR 15 mark"},
		{name: "integrity/after-summary", integrity: true,
			at:     onLine(vmtest.Event("summary"), "summary line"),
			window: "disk mapped, daemon exiting; before the init mounts it"},
	} {
		crashFirstBoot(ctx, t, s, jsFor[c.integrity], c)
	}
}

func crashFirstBoot(ctx context.Context, t *testing.T, s *suite, js *joinService, c firstBootKill) {
	t.Helper()
	size := int64(diskSize)
	if c.integrity {
		size = integrityDiskSize
	}
	row := crashOutcome{Case: "first boot/" + c.name, Expected: "uninitialized: format again; initialized: unlock, no format"}
	if c.beforeEnrol {
		row.Expected = "formats again → initialized, mapped"
	}
	n := s.newNode(ctx, t, "crash-"+strings.NewReplacer("/", "-", "%", "").Replace(c.name))
	b := n.boot(ctx, t, bootOpts{label: "killed at " + c.name, peers: []peer{js.peer()}, integrity: c.integrity, diskSize: size})
	trigger, err := c.at(ctx, b)
	if kerr := b.Kill(); kerr != nil && err == nil {
		err = kerr
	}
	if err != nil {
		row.Got = "kill point not reached: " + err.Error()
		recordCrash(t, row)
		return
	}
	after := probeDisk(n.disk)
	t.Logf("%s: kill at %s, window %s, left %s", c.name, trigger, c.window, after)
	got := "left " + after.String()
	if c.beforeEnrol && !after.neverInitialized() {
		row.Got = got + "; a kill before enrolment must leave a never-initialized disk"
		recordCrash(t, row)
		return
	}
	content := "converged-after-" + strings.ReplaceAll(c.name, "/", "-")
	res, err := convergeAfterKill(ctx, t, n, js, after, bootOpts{label: "after kill at " + c.name, integrity: c.integrity,
		extra: []string{"dm.write=f.txt:" + content, "dm.read=f.txt"}})
	if err != nil {
		row.Got = got + "; next boot: " + err.Error()
		recordCrash(t, row)
		return
	}
	file, err := await(ctx, res.boot, vmtest.All(vmtest.Event("file"), vmtest.Field("name", "f.txt")), "f.txt read back")
	if err == nil && file.Str("content") != content {
		err = fmt.Errorf("f.txt written after convergence reads back %s", file.Raw)
	}
	if err == nil {
		err = finishQuietly(ctx, res.boot)
	}
	if err != nil {
		row.Got = got + "; next boot: " + res.steps + "; " + err.Error()
		recordCrash(t, row)
		return
	}
	// No synced user data existed before a first-boot kill: the set is
	// empty, so nothing can be lost; what the daemon wrote (header, node
	// state) is checked by the convergence itself.
	row.Got, row.Survived = got+"; next: "+res.steps+", file ok", true
	recordCrash(t, row)
}

// converged is a boot after a kill that reached the daemon's summary.
type converged struct {
	boot  *boot
	steps string // what the boot did, for the matrix
}

// convergeAfterKill boots the node again with the JoinService up and checks
// it converges the way the disk the kill left demands.
func convergeAfterKill(ctx context.Context, t *testing.T, n *node, js *joinService, after diskAfterKill, o bootOpts) (converged, error) {
	t.Helper()
	o.peers = append(o.peers, js.peer())
	b := n.boot(ctx, t, o)
	res := converged{boot: b}
	prep, err := await(ctx, b, vmtest.Any(vmtest.Msg(msgPreparingNew), vmtest.Msg(msgPreparingExisting)), "preparing line")
	if err != nil {
		return res, err
	}
	resumed := false
	for _, l := range b.Lines()[:prep.Index] {
		resumed = resumed || l.Msg() == msgResumeFormat
	}
	wantNew := true
	switch {
	case after.neverInitialized():
		if prep.Msg() != msgPreparingNew {
			return res, fmt.Errorf("a never-initialized disk (%s) was prepared as existing: %s", after, prep.Raw)
		}
		if after.probe.State != "" && !resumed {
			return res, fmt.Errorf("our interrupted LUKS2 disk (%s) was formatted without %q", after, msgResumeFormat)
		}
		res.steps = "format (" + prep.Str("reason") + ")"
		if _, err := await(ctx, b, vmtest.Msg("State disk initialized"), "State disk initialized"); err != nil {
			return res, err
		}
		res.steps += " → initialized"
	case after.initialized():
		wantNew = false
		if prep.Msg() != msgPreparingExisting {
			return res, fmt.Errorf("REFORMATTED an initialized disk: %s", prep.Raw)
		}
		if prep.Str("uuid") != after.probe.UUID {
			return res, fmt.Errorf("unlocked uuid %s, the disk had %s", prep.Str("uuid"), after.probe.UUID)
		}
		res.steps = "unlock same UUID"
	default:
		return res, fmt.Errorf("the kill left a disk the daemon must refuse: %s", after)
	}
	sum, err := await(ctx, b, vmtest.Event("summary"), "summary line")
	if err != nil {
		return res, err
	}
	if sum.Str("newDisk") != strconv.FormatBool(wantNew) {
		return res, fmt.Errorf("summary newDisk %s, want %v: %s", sum.Str("newDisk"), wantNew, sum.Raw)
	}
	res.steps += " → mapped"
	return res, nil
}

// finishQuietly is boot.finish returning the error instead of failing, and
// checks the boot never formatted when it unlocked.
func finishQuietly(ctx context.Context, b *boot) error {
	done, err := await(ctx, b, vmtest.InitDone, "init_done")
	if err != nil {
		return err
	}
	if err := b.Wait(); err != nil {
		return fmt.Errorf("QEMU after init_done: %w", err)
	}
	if done.Str("status") != "0" || done.Str("actions_ok") != "true" {
		return fmt.Errorf("init: %s", done.Raw)
	}
	return nil
}

// noFormat fails if a boot of an initialized disk formatted anything.
func noFormat(b *boot) error {
	for _, l := range b.Lines() {
		if l.Msg() == msgPreparingNew || l.Msg() == msgResumeFormat {
			return fmt.Errorf("REFORMATTED: %s", l.Raw)
		}
	}
	return nil
}
