//go:build vmtest

package integration

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// Disk sizes: without integrity the disk only needs room for the LUKS2
// header and a small ext4; with integrity 64 MiB keeps the wipe ~3 s.
const (
	diskSize          = 32 << 20
	integrityDiskSize = 64 << 20
	// vmTimeout bounds one VM's life; TCG is CPU bound, and scenario e runs
	// three VMs on two cores.
	vmTimeout = 4 * time.Minute
)

// node is one VM of the cluster: a state disk and a provisioned TPM that
// persist across its boots.
type node struct {
	s      *suite
	name   string
	disk   string
	tpmDir string
}

// newNode creates a node with a blank disk (created at first boot) and a
// TPM the suite provisioned like a cloud.
func (s *suite) newNode(ctx context.Context, t *testing.T, name string) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{s: s, name: name, disk: filepath.Join(dir, "state.img"), tpmDir: filepath.Join(dir, "tpm")}
	s.provisionTPM(ctx, t, n.tpmDir)
	return n
}

// bootOpts says what one boot sees.
type bootOpts struct {
	label     string // for logs and the timing table
	peers     []peer // control-plane records; their vpcIP:30090 is forwarded
	integrity bool
	diskSize  int64    // default diskSize
	extra     []string // more kernel parameters (dm.write=…, dm.read=…, dm.pcr=15)
	// secondDisk (/dev/vdb) is an optional scratch disk of secondDiskSize bytes.
	secondDisk     string
	secondDiskSize int64
}

// boot is one boot of a node with its metadata server; the returned VM's
// line times are relative to QEMU's start, qemuStart converts them to host
// time (within the few ms of exec).
type boot struct {
	*vmtest.VM
	node      *node
	label     string
	qemuStart time.Time
	// measurements is the file of what this boot shows in PCRs 11, 12, 15.
	measurements string
	// image is "" for the busybox image, "systemd" for the systemd one.
	image string
}

func (b *boot) imageName() string {
	if b.image == "" {
		return "busybox"
	}
	return b.image
}

// bootCmdline is the kernel command line (beyond console, quiet, panic) of
// a boot with o: the genuine node configuration, then o.extra.
func bootCmdline(o bootOpts) []string {
	cmdline := []string{
		"dm.attestation=tpm",
		"dm.join-ca=/etc/disk-mapper/ca.pem",
		"dm.metadata-url=http://" + guestMetadataAddr,
		"dm.integrity=" + strconv.FormatBool(o.integrity),
	}
	return append(cmdline, o.extra...)
}

func (n *node) boot(ctx context.Context, t *testing.T, o bootOpts) *boot {
	t.Helper()
	mdPort := n.s.startMetadata(ctx, t, n.name, o.peers)
	forwards := []vmtest.Forward{{Guest: guestMetadataAddr, HostPort: mdPort}}
	for _, p := range o.peers {
		if p.hostPort == 0 {
			continue // a blackhole: restrict=on drops what has no forward
		}
		forwards = append(forwards, vmtest.Forward{
			Guest:    net.JoinHostPort(p.vpcIP, strconv.Itoa(constants.JoinServicePort)),
			HostPort: p.hostPort,
		})
	}
	size := o.diskSize
	if size == 0 {
		size = diskSize
	}
	cmdline := bootCmdline(o)
	measurements := n.s.mustMeasurements(t, o)
	vm, err := vmtest.Boot(ctx, t, vmtest.Config{
		Disk: n.disk, DiskSize: size, TPMStateDir: n.tpmDir,
		Initrd: n.s.image.Initrd, Cmdline: cmdline, Forwards: forwards, Timeout: vmTimeout,
		SecondDisk: o.secondDisk, SecondDiskSize: o.secondDiskSize,
	})
	if err != nil {
		t.Fatalf("%s %s: boot: %v", n.name, o.label, err)
	}
	b := &boot{VM: vm, node: n, label: n.name + " " + o.label, qemuStart: time.Now(), measurements: measurements}
	t.Cleanup(func() {
		scanBootForKeys(t, b)
		if t.Failed() {
			for _, l := range vm.Lines() {
				t.Logf("%s: %s", b.label, l)
			}
		}
	})
	return b
}

// hostTime is when the host read l.
func (b *boot) hostTime(l vmtest.Line) time.Time { return b.qemuStart.Add(l.At) }

// must waits for a line or fails the test.
func (b *boot) must(ctx context.Context, t *testing.T, p vmtest.Predicate, what string) vmtest.Line {
	t.Helper()
	l, err := b.WaitFor(ctx, p)
	if err != nil {
		t.Fatalf("%s: %s: %v", b.label, what, err)
	}
	return l
}

// mustMsg waits for a zap message.
func (b *boot) mustMsg(ctx context.Context, t *testing.T, msg string) vmtest.Line {
	t.Helper()
	return b.must(ctx, t, vmtest.Msg(msg), fmt.Sprintf("%q", msg))
}

// finish waits for the init's last line and QEMU's exit, and checks that the
// daemon mapped the disk and the test actions ran.
func (b *boot) finish(ctx context.Context, t *testing.T) vmtest.Line {
	t.Helper()
	done := b.must(ctx, t, vmtest.InitDone, "init_done")
	if err := b.Wait(); err != nil {
		t.Fatalf("%s: QEMU after init_done: %v", b.label, err)
	}
	if done.Str("status") != "0" || done.Str("actions_ok") != "true" {
		t.Fatalf("%s: %s", b.label, done.Raw)
	}
	return done
}

// summary waits for the daemon's final line and checks the key source.
func (b *boot) summary(ctx context.Context, t *testing.T, wantSource string, wantNew bool) vmtest.Line {
	t.Helper()
	sum := b.must(ctx, t, vmtest.Event("summary"), "summary line")
	if got := sum.Str("source"); got != wantSource {
		t.Errorf("%s: key source %q, want %q: %s", b.label, got, wantSource, sum.Raw)
	}
	if got := sum.Str("newDisk"); got != strconv.FormatBool(wantNew) {
		t.Errorf("%s: newDisk %s, want %v", b.label, got, wantNew)
	}
	return sum
}

// recoveryEndpoint is where dmctl reaches this boot's RecoveryServer.
func (b *boot) recoveryEndpoint() string { return b.RecoveryAddr() }
