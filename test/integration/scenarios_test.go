//go:build vmtest

package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// scenarioTimeout bounds a whole scenario (several boots).
const scenarioTimeout = 8 * time.Minute

func scenarioContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	t.Cleanup(cancel)
	return ctx
}

var waitingLine = vmtest.Msg("Waiting for decryption key")

// firstBoot boots a node on its blank disk with the JoinService up: the
// disk is formatted, the JoinService's ticket is enrolled, the disk is
// initialized and mapped. It returns the disk UUID.
func firstBoot(ctx context.Context, t *testing.T, n *node, js *joinService, o bootOpts) string {
	uuid, _ := firstBootVM(ctx, t, n, js, o)
	return uuid
}

func firstBootVM(ctx context.Context, t *testing.T, n *node, js *joinService, o bootOpts) (string, *boot) {
	t.Helper()
	if o.label == "" {
		o.label = "first boot"
	}
	o.peers = append(o.peers, js.peer())
	b := n.boot(ctx, t, o)
	b.mustMsg(ctx, t, "Preparing new state disk")
	formatted := b.mustMsg(ctx, t, "State disk formatted")
	uuid := formatted.Str("uuid")
	waiting := b.must(ctx, t, waitingLine, "waiting line")
	b.mustMsg(ctx, t, "State disk initialized")
	sum := b.summary(ctx, t, "RejoinClient", true)
	if sum.Str("uuid") != uuid {
		t.Errorf("%s: summary uuid %s, formatted %s", b.label, sum.Str("uuid"), uuid)
	}
	served, _ := js.lastTicket(uuid)
	recordBoot(t, b, waiting, sum, "ticket", served)
	b.finish(ctx, t)
	return uuid, b
}

// rejoin boots an existing disk with the JoinService up and checks the
// rejoin path won and PCR 15 holds the cluster ID.
func rejoin(ctx context.Context, t *testing.T, n *node, js *joinService, uuid string, o bootOpts) *boot {
	t.Helper()
	o.peers = append(o.peers, js.peer())
	o.extra = append(o.extra, "dm.pcr=15")
	b := n.boot(ctx, t, o)
	prep := b.mustMsg(ctx, t, "Preparing existing state disk")
	if prep.Str("uuid") != uuid {
		t.Errorf("%s: disk uuid %s, want %s", b.label, prep.Str("uuid"), uuid)
	}
	waiting := b.must(ctx, t, waitingLine, "waiting line")
	sum := b.summary(ctx, t, "RejoinClient", false)
	served, _ := js.lastTicket(uuid)
	recordBoot(t, b, waiting, sum, "ticket", served)
	pcr := b.must(ctx, t, vmtest.Event("pcr"), "PCR 15 read by the init")
	if got := pcr.Str("value"); got != n.s.expectedPCR15 {
		t.Errorf("%s: PCR 15 = %s, want cluster ID value %s", b.label, got, n.s.expectedPCR15)
	}
	return b
}

// a + b: first boot on a blank disk, then a reboot that rejoins; a file
// written in the first boot is read back, PCR 15 carries the cluster ID.
func TestBlankDiskThenRejoin(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t)
	n := s.newNode(ctx, t, "node-a")

	content := fmt.Sprintf("written-at-first-boot-%d", time.Now().UnixNano())
	uuid := firstBoot(ctx, t, n, js, bootOpts{extra: []string{"dm.write=data/hello.txt:" + content}})

	b := rejoin(ctx, t, n, js, uuid, bootOpts{label: "rejoin", extra: []string{"dm.read=data/hello.txt"}})
	file := b.must(ctx, t, vmtest.Event("file"), "file read back")
	if file.Str("content") != content {
		t.Errorf("read back %s, want %q", file.Raw, content)
	}
	b.finish(ctx, t)
}

// deadBoot boots an existing disk while every JoinService endpoint is dead
// (one never answers, one is a closed port) and checks the seed's log lines
// up to "Waiting for decryption key", which it returns.
func deadBoot(ctx context.Context, t *testing.T, n *node, uuid string, o bootOpts) (*boot, vmtest.Line) {
	t.Helper()
	o.peers = append(o.peers, deadPeers(t)...)
	b := n.boot(ctx, t, o)
	prep := b.mustMsg(ctx, t, "Preparing existing state disk")
	if prep.Str("uuid") != uuid {
		t.Errorf("%s: disk uuid %s, want %s", b.label, prep.Str("uuid"), uuid)
	}
	waiting := b.must(ctx, t, waitingLine, "waiting line")
	list := b.mustMsg(ctx, t, "Received list with JoinService endpoints")
	for _, ip := range []string{guestSilentIP, guestClosedIP} {
		if !strings.Contains(list.Str("endpoints"), ip+":30090") {
			t.Errorf("%s: endpoint %s:30090 not discovered: %s", b.label, ip, list.Raw)
		}
	}
	b.mustMsg(ctx, t, "Requesting rejoin ticket")
	// The closed port fails at once; the silent one only at the attempt
	// deadline (10 s), so "on all endpoints" is awaited only where needed.
	b.mustMsg(ctx, t, "Failed to rejoin on endpoint")
	return b, waiting
}

// recovered checks the node took a pushed key: the RecoveryServer shut down,
// the RejoinClient stopped, the disk mapped, PCR 15 marked.
func recovered(ctx context.Context, t *testing.T, b *boot, waiting vmtest.Line, push dmctlResult) {
	t.Helper()
	b.mustMsg(ctx, t, "Received state disk key and measurement secret, shutting down server")
	b.mustMsg(ctx, t, "RejoinClient stopped")
	sum := b.summary(ctx, t, "RecoveryServer", false)
	recordBoot(t, b, waiting, sum, "dmctl", push.started)
	pcr := b.must(ctx, t, vmtest.Event("pcr"), "PCR 15 read by the init")
	if got := pcr.Str("value"); got != b.node.s.expectedPCR15 {
		t.Errorf("%s: PCR 15 = %s, want %s", b.label, got, b.node.s.expectedPCR15)
	}
	b.finish(ctx, t)
}

// c: every JoinService endpoint dead → the node waits; dmctl recover unlocks.
func TestAllJoinServicesDeadThenDmctlRecover(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t)
	n := s.newNode(ctx, t, "node-c")
	uuid := firstBoot(ctx, t, n, js, bootOpts{})
	js.stop()

	b, waiting := deadBoot(ctx, t, n, uuid, bootOpts{label: "JoinService dead", extra: []string{"dm.pcr=15"}})
	b.mustMsg(ctx, t, "Failed to rejoin on all endpoints")
	push := s.dmctlRecover(ctx, t, s.masterSecret, b.measurements, b.RecoveryAddr())
	if push.exitCode != 0 || !strings.Contains(push.stdout, "Pushed recovery key.") {
		t.Fatalf("dmctl recover: exit %d, stdout %q", push.exitCode, push.stdout)
	}
	b.mustMsg(ctx, t, "Received recover call")
	recovered(ctx, t, b, waiting, push)
}

// d: a key of another cluster is refused (PermissionDenied, dmctl exits
// non-zero) and the node keeps waiting; the right key then unlocks it.
func TestWrongKeyThenRightKey(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t)
	n := s.newNode(ctx, t, "node-d")
	uuid := firstBoot(ctx, t, n, js, bootOpts{})
	js.stop()

	b, waiting := deadBoot(ctx, t, n, uuid, bootOpts{label: "wrong key first", extra: []string{"dm.pcr=15"}})
	wrong := s.dmctlRecover(ctx, t, s.wrongSecret, b.measurements, b.RecoveryAddr())
	if wrong.exitCode == 0 || !strings.Contains(wrong.stdout+wrong.stderr, "PermissionDenied") {
		t.Fatalf("dmctl with another cluster's secret: exit %d, want non-zero and PermissionDenied; stderr %q", wrong.exitCode, wrong.stderr)
	}
	b.mustMsg(ctx, t, "Recover call refused")
	// Still waiting: no key accepted, the VM runs, and the same server
	// takes the right key below.
	for _, l := range b.Lines() {
		if l.Event() == "summary" || l.Msg() == "Disk key accepted" {
			t.Fatalf("%s: a wrong key unlocked the node: %s", b.label, l.Raw)
		}
	}
	select {
	case <-b.Done():
		t.Fatalf("%s: the VM ended after a wrong key", b.label)
	default:
	}

	right := s.dmctlRecover(ctx, t, s.masterSecret, b.measurements, b.RecoveryAddr())
	if right.exitCode != 0 || !strings.Contains(right.stdout, "Pushed recovery key.") {
		t.Fatalf("dmctl recover with the right secret: exit %d, stdout %q", right.exitCode, right.stdout)
	}
	recovered(ctx, t, b, waiting, right)
}

// e: quorum loss. Three nodes wait at the same time (1 vCPU each on the
// host's cores); one dmctl recover pushes all three.
func TestQuorumLossOneRecoverForThreeNodes(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t)
	nodes := make([]*node, 3)
	uuids := make([]string, 3)
	for i := range nodes {
		nodes[i] = s.newNode(ctx, t, fmt.Sprintf("node-e%d", i))
		uuids[i] = firstBoot(ctx, t, nodes[i], js, bootOpts{})
	}
	js.stop()

	boots := make([]*boot, 3)
	waits := make([]vmtest.Line, 3)
	endpoints := make([]string, 3)
	for i, n := range nodes {
		// Boot all three before waiting on any: they must wait together.
		boots[i] = n.boot(ctx, t, bootOpts{label: "quorum lost", peers: deadPeers(t), extra: []string{"dm.pcr=15"}})
		endpoints[i] = boots[i].RecoveryAddr()
	}
	for i, b := range boots {
		waits[i] = b.must(ctx, t, waitingLine, "waiting line")
		b.mustMsg(ctx, t, "Failed to rejoin on endpoint")
		if got := b.mustMsg(ctx, t, "Preparing existing state disk").Str("uuid"); got != uuids[i] {
			t.Errorf("%s: uuid %s, want %s", b.label, got, uuids[i])
		}
	}
	push := s.dmctlRecover(ctx, t, s.masterSecret, boots[0].measurements, endpoints...)
	if push.exitCode != 0 || strings.Count(push.stdout, "Pushed recovery key.") != 3 {
		t.Fatalf("dmctl recover of three nodes: exit %d, stdout %q", push.exitCode, push.stdout)
	}
	for i, b := range boots {
		recovered(ctx, t, b, waits[i], push)
	}
}

// f (seed 000, power-off): QEMU killed after the disk was mapped; the next
// boot rejoins, the data is still there.
func TestPowerOffAfterUnlockThenRejoin(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t)
	n := s.newNode(ctx, t, "node-f")
	uuid := firstBoot(ctx, t, n, js, bootOpts{extra: []string{"dm.write=kept.txt:before-power-off"}})

	b := n.boot(ctx, t, bootOpts{label: "powered off", peers: []peer{js.peer()}})
	b.summary(ctx, t, "RejoinClient", false)
	if err := b.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}

	again := rejoin(ctx, t, n, js, uuid, bootOpts{label: "after power-off", extra: []string{"dm.read=kept.txt"}})
	if f := again.must(ctx, t, vmtest.Event("file"), "file"); f.Str("content") != "before-power-off" {
		t.Errorf("after power-off: %s", f.Raw)
	}
	again.finish(ctx, t)
}

// f (seed 000, VM deleted): a new blank disk, with the same TPM and then
// with a new TPM, joins as a new node with a new disk UUID.
func TestDeletedVMJoinsAsNew(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t)
	n := s.newNode(ctx, t, "node-g")
	seen := map[string]string{firstBoot(ctx, t, n, js, bootOpts{}): "first VM"}

	if err := os.Remove(n.disk); err != nil {
		t.Fatal(err)
	}
	uuid := firstBoot(ctx, t, n, js, bootOpts{label: "new disk, same TPM"})
	if prev, dup := seen[uuid]; dup {
		t.Fatalf("new disk has the UUID of the %s: %s", prev, uuid)
	}
	seen[uuid] = "disk of the same TPM"

	fresh := s.newNode(ctx, t, "node-g") // same name, new disk, new TPM
	uuid = firstBoot(ctx, t, fresh, js, bootOpts{label: "new disk, new TPM"})
	if prev, dup := seen[uuid]; dup {
		t.Fatalf("new VM has the UUID of the %s: %s", prev, uuid)
	}
}

// g: power loss during the first-boot format, at three points; the next
// boot always converges: formats (again) and initializes.
func TestPowerLossDuringFirstFormat(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinService(ctx, t)
	for _, kp := range []struct {
		name  string
		at    string
		peers func() []peer
		// wantResume: the next boot must find our never-initialized LUKS2
		// disk and redo it (false: it may find it blank or ours).
		wantResume bool
	}{
		{"preparing", "Preparing new state disk", func() []peer { return []peer{js.peer()} }, false},
		{"formatted", "State disk formatted", func() []peer { return []peer{js.peer()} }, true},
		// Dead endpoints keep the node waiting with a formatted, unkeyed disk.
		{"waiting-for-key", "Waiting for decryption key", func() []peer { return deadPeers(t) }, true},
	} {
		n := s.newNode(ctx, t, "node-h-"+kp.name)
		b := n.boot(ctx, t, bootOpts{label: "killed at " + kp.name, peers: kp.peers()})
		b.mustMsg(ctx, t, kp.at)
		if err := b.Kill(); err != nil {
			t.Fatalf("kill: %v", err)
		}

		next := n.boot(ctx, t, bootOpts{label: "after loss at " + kp.name, peers: []peer{js.peer()},
			extra: []string{"dm.write=f.txt:converged", "dm.read=f.txt"}})
		prep := next.mustMsg(ctx, t, "Preparing new state disk")
		resumed := false
		for _, l := range next.Lines()[:prep.Index] {
			resumed = resumed || l.Msg() == "State disk was never initialized, formatting it again"
		}
		if kp.wantResume && !resumed {
			t.Errorf("%s: no %q before formatting again", next.label, "State disk was never initialized, formatting it again")
		}
		t.Logf("%s: resumed interrupted format: %v (reason %q)", next.label, resumed, prep.Str("reason"))
		next.mustMsg(ctx, t, "State disk initialized")
		next.summary(ctx, t, "RejoinClient", true)
		if f := next.must(ctx, t, vmtest.Event("file"), "file"); f.Str("content") != "converged" {
			t.Errorf("%s: %s", next.label, f.Raw)
		}
		next.finish(ctx, t)
	}
}

// Integrity on (hmac(sha256) via dm-integrity, 64 MiB): the format wipes
// the disk with progress lines; the rejoin maps the integrity device.
func TestIntegrityDiskFirstBootAndRejoin(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)
	js := s.startJoinServiceFor(ctx, t, bootOpts{integrity: true})
	n := s.newNode(ctx, t, "node-i")
	o := bootOpts{label: "first boot, integrity", integrity: true, diskSize: integrityDiskSize,
		extra: []string{"dm.write=i.txt:integrity-protected"}}
	uuid, first := firstBootVM(ctx, t, n, js, o)
	wipe := first.mustMsg(ctx, t, "Wiping state disk for integrity")
	var last vmtest.Line
	for _, l := range first.Lines() {
		if l.Msg() == wipe.Msg() {
			last = l
		}
	}
	if last.Str("percent") != "100" || last.Str("total_bytes") == "0" {
		t.Errorf("%s: the wipe did not finish: %s", first.label, last.Raw)
	}
	b := rejoin(ctx, t, n, js, uuid, bootOpts{label: "rejoin, integrity", integrity: true, extra: []string{"dm.read=i.txt"}})
	if f := b.must(ctx, t, vmtest.Event("file"), "file"); f.Str("content") != "integrity-protected" {
		t.Errorf("%s: %s", b.label, f.Raw)
	}
	b.finish(ctx, t)
}
