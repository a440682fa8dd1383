//go:build vmtest

package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// TestCrashRejoinKeepsSyncedData: an initialized integrity disk holds files
// written (and synced) on earlier boots; power losses on later boots must
// never reformat it and never lose a synced byte. One node, five boots:
//
//	0  first boot, writes a.txt
//	1  rejoin, killed at "Disk key accepted" (activate with the
//	   dm-integrity journal, the read-only node-state mount, PCR mark)
//	2  unlocks (row 1 verified: a.txt), writes b.txt, syncs, reads it and
//	   is killed on that line: the ext4 is still mounted read-write
//	3  killed at "State disk unlocked": inside the read-only node-state
//	   mount, which replays the ext4 journal boot 2 left, or the PCR mark
//	4  unlocks and reads a.txt and b.txt (row 2 verified: both kills)
//
// Every boot after the first must prepare the same UUID as existing.
func TestCrashRejoinKeepsSyncedData(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	base := bootOpts{integrity: true, diskSize: integrityDiskSize}
	js := s.startJoinServiceFor(ctx, t, base)
	n := s.newNode(ctx, t, "crash-data")

	synced := map[string]string{"a.txt": fmt.Sprintf("synced-at-first-boot-%d", time.Now().UnixNano())}
	o := base
	o.label, o.extra = "first boot (data)", []string{"dm.write=a.txt:" + synced["a.txt"]}
	uuid := firstBoot(ctx, t, n, js, o)

	const expected = "unlocks same UUID, no reformat, synced files intact"
	row1 := crashOutcome{Case: "rejoin/key-accepted", Expected: expected}
	if err := killRejoin(ctx, t, n, js, uuid, base, "rejoin killed at key accepted", vmtest.Msg("Disk key accepted")); err != nil {
		row1.Got = err.Error()
		recordCrash(t, row1)
		return
	}
	row1.Got = "killed at \"Disk key accepted\""

	// Boot 2: verify row 1, then write b.txt and die with it mounted.
	synced["b.txt"] = fmt.Sprintf("synced-before-power-loss-%d", time.Now().UnixNano())
	o = base
	o.label = "after kill at key accepted"
	o.extra = []string{"dm.read=a.txt", "dm.write=b.txt:" + synced["b.txt"], "dm.read=b.txt"}
	b2, err := unlockExisting(ctx, t, n, js, uuid, o)
	var readA, readB vmtest.Line
	if err == nil {
		readA, err = await(ctx, b2, vmtest.All(vmtest.Event("file"), vmtest.Field("name", "a.txt")), "a.txt read back")
	}
	if err != nil {
		row1.Got += "; next boot: " + err.Error()
		recordCrash(t, row1)
		return
	}
	row1.DataLost = lostBytes(synced["a.txt"], readA)
	row1.Survived = true
	row1.Got += fmt.Sprintf("; next: unlocked same UUID, a.txt %d/%d bytes intact", int64(len(synced["a.txt"]))-row1.DataLost, len(synced["a.txt"]))
	recordCrash(t, row1)

	row2 := crashOutcome{Case: "rejoin/after-synced-write+during-journal-replay", Expected: expected}
	// The init reads b.txt only after its write and sync returned.
	readB, err = await(ctx, b2, vmtest.All(vmtest.Event("file"), vmtest.Field("name", "b.txt")), "b.txt read back before the kill")
	if kerr := b2.Kill(); err == nil {
		err = kerr
	}
	if err == nil && readB.Str("content") != synced["b.txt"] {
		err = fmt.Errorf("b.txt did not read back before the kill: %s", readB.Raw)
	}
	if err == nil {
		err = killRejoin(ctx, t, n, js, uuid, base, "rejoin killed at unlocked", vmtest.Msg("State disk unlocked"))
	}
	if err != nil {
		row2.Got = err.Error()
		recordCrash(t, row2)
		return
	}
	row2.Got = "killed after b.txt synced (ext4 mounted rw), then at \"State disk unlocked\""

	o = base
	o.label, o.extra = "after two kills", []string{"dm.read=a.txt", "dm.read=b.txt"}
	b4, err := unlockExisting(ctx, t, n, js, uuid, o)
	reads := map[string]vmtest.Line{}
	for _, name := range []string{"a.txt", "b.txt"} {
		if err == nil {
			reads[name], err = await(ctx, b4, vmtest.All(vmtest.Event("file"), vmtest.Field("name", name)), name+" read back")
		}
	}
	if err == nil {
		err = finishQuietly(ctx, b4)
	}
	if err != nil {
		row2.Got += "; next boot: " + err.Error()
		recordCrash(t, row2)
		return
	}
	total := 0
	for name, content := range synced {
		row2.DataLost += lostBytes(content, reads[name])
		total += len(content)
	}
	row2.Survived = true
	row2.Got += fmt.Sprintf("; next: unlocked same UUID, a.txt+b.txt %d/%d bytes intact", int64(total)-row2.DataLost, total)
	recordCrash(t, row2)
}

// unlockExisting boots an initialized disk and waits for its summary: the
// same UUID prepared as existing, never a format.
func unlockExisting(ctx context.Context, t *testing.T, n *node, js *joinService, uuid string, o bootOpts) (*boot, error) {
	t.Helper()
	o.peers = append(o.peers, js.peer())
	b := n.boot(ctx, t, o)
	prep, err := await(ctx, b, vmtest.Any(vmtest.Msg(msgPreparingNew), vmtest.Msg(msgPreparingExisting)), "preparing line")
	if err != nil {
		return b, err
	}
	if prep.Msg() != msgPreparingExisting || prep.Str("uuid") != uuid {
		return b, fmt.Errorf("want %q of %s, got %s", msgPreparingExisting, uuid, prep.Raw)
	}
	sum, err := await(ctx, b, vmtest.Event("summary"), "summary line")
	if err != nil {
		return b, err
	}
	if sum.Str("newDisk") != "false" {
		return b, fmt.Errorf("summary of an existing disk says newDisk: %s", sum.Raw)
	}
	return b, noFormat(b)
}

// killRejoin boots the initialized disk and pulls the plug at the line p,
// after checking the boot took the disk as existing.
func killRejoin(ctx context.Context, t *testing.T, n *node, js *joinService, uuid string, o bootOpts, label string, p vmtest.Predicate) error {
	t.Helper()
	o.label, o.peers = label, append(o.peers, js.peer())
	b := n.boot(ctx, t, o)
	prep, err := await(ctx, b, vmtest.Any(vmtest.Msg(msgPreparingNew), vmtest.Msg(msgPreparingExisting)), "preparing line")
	if err == nil && (prep.Msg() != msgPreparingExisting || prep.Str("uuid") != uuid) {
		err = fmt.Errorf("want %q of %s, got %s", msgPreparingExisting, uuid, prep.Raw)
	}
	if err == nil {
		_, err = await(ctx, b, p, label)
	}
	if kerr := b.Kill(); err == nil {
		err = kerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	if after := probeDisk(n.disk); !after.initialized() || after.probe.UUID != uuid {
		return fmt.Errorf("%s: the kill left %s, want our initialized %s", label, after, uuid)
	}
	return nil
}
