//go:build vmtest

package integration

// Scenarios on the systemd image (image/systemd-initrd): the shipped unit
// under systemd 252 in a dracut initrd, the daemon configured through its
// EnvironmentFile, a workload stand-in that needs dev-mapper-state.device,
// and the failure path into emergency. The busybox image runs the bulk of
// the suite; these prove what only real systemd can.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/measure"
	"github.com/diskmapper/disk-mapper/internal/prereq"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// systemdArgs is the systemd image's /etc/default/disk-mapper: the same
// genuine configuration the busybox boots get on their command line.
const systemdArgs = "--attestation=tpm --join-ca=/etc/disk-mapper/ca.pem --metadata-url=http://" + guestMetadataAddr + " --integrity=false"

// sysImage is one built variant of the systemd image.
type sysImage struct {
	measure.SystemdImage
	name   string
	listen bool // socket-activated daemon (key hand-over socket)

	mu           sync.Mutex
	measurements map[string]string
}

var (
	sysImagesMu sync.Mutex
	sysImages   = map[string]*sysImage{}
)

// systemdImage builds (once per test binary) the systemd image variant
// name: "" is the default image, anything else adds the overlay
// image/systemd-initrd/variants/<name> and envArgs as its DISK_MAPPER_ARGS.
func systemdImage(t *testing.T, s *suite, name, envArgs string, listen bool) *sysImage {
	t.Helper()
	sysImagesMu.Lock()
	defer sysImagesMu.Unlock()
	if img, ok := sysImages[name]; ok {
		if img == nil {
			t.Fatalf("systemd image %q failed to build earlier", name)
		}
		return img
	}
	sysImages[name] = nil
	if os.Geteuid() != 0 {
		prereq.Missing(t, "root (mmdebstrap, chroot)", "run as root")
	}
	prereq.NeedTool(t, "mmdebstrap", "mmdebstrap")
	root, err := vmtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.dir, "image-systemd")
	if name != "" {
		dir += "-" + name
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	env := filepath.Join(dir, "disk-mapper.env")
	if envArgs == "" {
		envArgs = systemdArgs
	}
	if err := os.WriteFile(env, []byte("DISK_MAPPER_ARGS=\""+envArgs+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd.cpio")
	args := []string{filepath.Join(root, "image", "systemd-initrd", "build.sh"),
		"-d", s.bin.diskMapper, "-m", s.bin.dmMeasure, "-e", env, "-c", filepath.Join(s.dir, "image-config"), "-o", out}
	if name != "" {
		args = append(args, "-x", filepath.Join(root, "image", "systemd-initrd", "variants", name))
	}
	start := time.Now()
	if err := vmtest.RunLogged(t, root, args...); err != nil {
		t.Fatalf("building the systemd image %q: %v", name, err)
	}
	t.Logf("systemd image %q built in %v", name, time.Since(start).Round(time.Millisecond))
	img := &sysImage{SystemdImage: measure.SystemdImage{Initrd: out, Root: strings.TrimSuffix(out, ".cpio") + "-root"},
		name: name, listen: listen, measurements: map[string]string{}}
	sysImages[name] = img
	return img
}

// cmdline is the extra kernel command line of a boot of the systemd image.
func (img *sysImage) cmdline(extra []string) []string {
	return append([]string(nil), extra...)
}

// measurementsFor is the measurements file of a boot with extra kernel
// parameters, computed from the cpio and its tree (internal/measure).
func (img *sysImage) measurementsFor(t *testing.T, dir string, extra []string) string {
	t.Helper()
	cmdline := vmtest.KernelCmdline(img.cmdline(extra))
	img.mu.Lock()
	defer img.mu.Unlock()
	if p, ok := img.measurements[cmdline]; ok {
		return p
	}
	events, err := measure.ExpectedSystemdBoot(img.SystemdImage, cmdline, img.listen)
	if err != nil {
		t.Fatalf("expected measurements: %v", err)
	}
	raw, err := json.Marshal(measure.Expected(events))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, fmt.Sprintf("measurements-systemd-%s-%d.json", img.name, len(img.measurements)))
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	img.measurements[cmdline] = p
	return p
}

type sysOpts struct {
	label string
	peers []peer
	extra []string
}

// sysBoot boots node n on the systemd image (2 vCPUs: systemd's parallel
// start gains 2–4 s from the second one).
func (n *node) sysBoot(ctx context.Context, t *testing.T, img *sysImage, o sysOpts) *boot {
	t.Helper()
	mdPort := n.s.startMetadata(ctx, t, n.name, o.peers)
	forwards := []vmtest.Forward{{Guest: guestMetadataAddr, HostPort: mdPort}}
	for _, p := range o.peers {
		forwards = append(forwards, vmtest.Forward{
			Guest:    net.JoinHostPort(p.vpcIP, strconv.Itoa(constants.JoinServicePort)),
			HostPort: p.hostPort,
		})
	}
	vm, err := vmtest.Boot(ctx, t, vmtest.Config{
		Disk: n.disk, DiskSize: diskSize, TPMStateDir: n.tpmDir,
		Initrd: img.Initrd, Cmdline: img.cmdline(o.extra), Forwards: forwards, Timeout: vmTimeout, SMP: 2,
	})
	if err != nil {
		t.Fatalf("%s %s: boot: %v", n.name, o.label, err)
	}
	b := &boot{VM: vm, node: n, label: n.name + " " + o.label, qemuStart: time.Now(),
		measurements: img.measurementsFor(t, n.s.dir, o.extra), image: "systemd"}
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

// startJoinServiceMeasured runs the JoinService accepting exactly the
// measurements in file.
func (s *suite) startJoinServiceMeasured(ctx context.Context, t *testing.T, file string) *joinService {
	t.Helper()
	p := startHostProc(t, "joinservice", s.bin.joinservice,
		"--listen", "127.0.0.1:0", "--master-secret", s.masterSecret,
		"--cert", s.joinCert, "--key", s.joinKey,
		"--measurements", file, "--ak-roots", s.platformCA)
	started, err := p.waitMsg(ctx, "Starting JoinService")
	if err != nil {
		t.Fatal(err)
	}
	port, err := listenPort(started)
	if err != nil {
		t.Fatal(err)
	}
	return &joinService{hostProc: p, port: port}
}

var workloadLine = vmtest.Event("workload")

// sysWorkload waits for the workload stand-in's line and checks it started
// after the daemon's summary with the disk mapped, found boots earlier
// boots recorded on the disk, and saw the PCRs the validators accepted
// (11, 12) and the cluster ID (15).
func sysWorkload(ctx context.Context, t *testing.T, b *boot, summary vmtest.Line, boots int) vmtest.Line {
	t.Helper()
	w := b.must(ctx, t, workloadLine, "workload line")
	if w.Index < summary.Index {
		t.Errorf("%s: the workload reported (line %d) before the daemon's summary (line %d)", b.label, w.Index, summary.Index)
	}
	if w.Str("mapped") != "true" || w.Str("daemon") != "active" || w.Str("boots_before") != strconv.Itoa(boots) ||
		w.Str("boots") != strconv.Itoa(boots+1) {
		t.Errorf("%s: workload %s, want mapped, daemon active, %d earlier boots", b.label, w.Raw, boots)
	}
	raw, err := os.ReadFile(b.measurements)
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]string
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	for _, pcr := range []string{"11", "12"} {
		if got := w.Str("pcr" + pcr); got != want[pcr] {
			t.Errorf("%s: PCR %s = %s, the image's expected value %s", b.label, pcr, got, want[pcr])
		}
	}
	if got := w.Str("pcr15"); got != b.node.s.expectedPCR15 {
		t.Errorf("%s: PCR 15 = %s, want the cluster ID value %s", b.label, got, b.node.s.expectedPCR15)
	}
	return w
}

// sysFinish waits for the test image's end-of-boot line and QEMU's exit.
func sysFinish(ctx context.Context, t *testing.T, b *boot) {
	t.Helper()
	done := b.must(ctx, t, vmtest.Event("boot_done"), "boot_done")
	if done.Str("daemon") != "success" {
		t.Errorf("%s: %s", b.label, done.Raw)
	}
	if err := b.Wait(); err != nil {
		t.Fatalf("%s: QEMU after boot_done: %v", b.label, err)
	}
}

// noWorkloadYet fails if the workload has started.
func noWorkloadYet(t *testing.T, b *boot, when string) {
	t.Helper()
	for _, l := range b.Lines() {
		if l.Event() == "workload" {
			t.Fatalf("%s: the workload started %s: %s", b.label, when, l.Raw)
		}
	}
}

// sysFirstBoot boots a blank disk on the systemd image with js up.
func sysFirstBoot(ctx context.Context, t *testing.T, n *node, img *sysImage, js *joinService) string {
	t.Helper()
	b := n.sysBoot(ctx, t, img, sysOpts{label: "first boot [systemd]", peers: []peer{js.peer()}})
	b.mustMsg(ctx, t, "Preparing new state disk")
	uuid := b.mustMsg(ctx, t, "State disk formatted").Str("uuid")
	waiting := b.must(ctx, t, waitingLine, "waiting line")
	b.mustMsg(ctx, t, "State disk initialized")
	sum := b.summary(ctx, t, "RejoinClient", true)
	served, _ := js.lastTicket(uuid)
	recordBoot(t, b, waiting, sum, "ticket", served)
	sysWorkload(ctx, t, b, sum, 0)
	sysFinish(ctx, t, b)
	return uuid
}

// First boot on a blank disk, then a rejoin, both under systemd: the
// JoinService attests the image's PCR 11 and 12 values; the workload starts
// only once the disk is mapped and sees the first boot's record.
func TestSystemdFirstBootThenRejoin(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	img := systemdImage(t, s, "", "", false)
	ctx := scenarioContext(t)
	js := s.startJoinServiceMeasured(ctx, t, img.measurementsFor(t, s.dir, nil))
	n := s.newNode(ctx, t, "node-s1")
	uuid := sysFirstBoot(ctx, t, n, img, js)

	b := n.sysBoot(ctx, t, img, sysOpts{label: "rejoin [systemd]", peers: []peer{js.peer()}})
	if got := b.mustMsg(ctx, t, "Preparing existing state disk").Str("uuid"); got != uuid {
		t.Errorf("%s: disk uuid %s, want %s", b.label, got, uuid)
	}
	waiting := b.must(ctx, t, waitingLine, "waiting line")
	sum := b.summary(ctx, t, "RejoinClient", false)
	served, _ := js.lastTicket(uuid)
	recordBoot(t, b, waiting, sum, "ticket", served)
	sysWorkload(ctx, t, b, sum, 1)
	sysFinish(ctx, t, b)
}

// Every JoinService dead: the node waits under systemd (the workload does
// not start), dmctl recover attests it with the PCR map and unlocks it.
func TestSystemdLostQuorumThenDmctlRecover(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	img := systemdImage(t, s, "", "", false)
	ctx := scenarioContext(t)
	js := s.startJoinServiceMeasured(ctx, t, img.measurementsFor(t, s.dir, nil))
	n := s.newNode(ctx, t, "node-s2")
	uuid := sysFirstBoot(ctx, t, n, img, js)
	js.stop()

	b := n.sysBoot(ctx, t, img, sysOpts{label: "quorum lost [systemd]", peers: deadPeers(t)})
	if got := b.mustMsg(ctx, t, "Preparing existing state disk").Str("uuid"); got != uuid {
		t.Errorf("%s: disk uuid %s, want %s", b.label, got, uuid)
	}
	waiting := b.must(ctx, t, waitingLine, "waiting line")
	b.mustMsg(ctx, t, "Failed to rejoin on endpoint")
	noWorkloadYet(t, b, "while the daemon waits for a key")
	push := s.dmctlRecover(ctx, t, s.masterSecret, b.measurements, b.RecoveryAddr())
	if push.exitCode != 0 || !strings.Contains(push.stdout, "Pushed recovery key.") {
		t.Fatalf("dmctl recover: exit %d, stdout %q", push.exitCode, push.stdout)
	}
	b.mustMsg(ctx, t, "Received state disk key and measurement secret, shutting down server")
	sum := b.summary(ctx, t, "RecoveryServer", false)
	recordBoot(t, b, waiting, sum, "dmctl", push.started)
	sysWorkload(ctx, t, b, sum, 1)
	sysFinish(ctx, t, b)
}

// A disk the node did not make (a LUKS2 header from the host's cryptsetup):
// the daemon refuses it, says why, and waits; nothing after it starts.
func TestSystemdRefusedDiskWaits(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	img := systemdImage(t, s, "", "", false)
	ctx := scenarioContext(t)
	n := s.newNode(ctx, t, "node-s3")
	if err := os.WriteFile(n.disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(n.disk, diskSize); err != nil {
		t.Fatal(err)
	}
	testutil.CLIFormatLUKS2(t, n.disk, []byte("a key of the host's"))
	b := n.sysBoot(ctx, t, img, sysOpts{label: "refused disk [systemd]", peers: deadPeers(t)})
	refused := b.mustMsg(ctx, t, "Refusing state disk; waiting for an operator")
	if refused.Str("reason") == "" {
		t.Errorf("%s: no reason: %s", b.label, refused.Raw)
	}
	t.Logf("%s: refused: %s", b.label, refused.Str("reason"))
	// Still running, still waiting, nothing ordered after the mapping started.
	b.mustMsg(ctx, t, "Starting RecoveryServer")
	noWorkloadYet(t, b, "on a refused disk")
	for _, l := range b.Lines() {
		if l.Event() == "emergency" || l.Event() == "boot_done" {
			t.Fatalf("%s: the boot went on: %s", b.label, l.Raw)
		}
	}
	select {
	case <-b.Done():
		t.Fatalf("%s: the VM ended on a refused disk", b.label)
	default:
	}
}

// The daemon fails (a host-supplied disk_mapper.join_endpoints it cannot
// parse): the unit fails, the boot stops in emergency, the serial port says
// which unit failed and why, and nothing ordered after the mapping runs.
func TestSystemdDaemonFailureEmergency(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	img := systemdImage(t, s, "", "", false)
	ctx := scenarioContext(t)
	n := s.newNode(ctx, t, "node-s4")
	b := n.sysBoot(ctx, t, img, sysOpts{label: "daemon fails [systemd]",
		extra: []string{constants.KernelCmdlineJoinEndpoints + "=not-an-endpoint"}})
	b.mustMsg(ctx, t, "Failed to configure disk-mapper")
	em := b.must(ctx, t, vmtest.Event("emergency"), "emergency report")
	if !strings.Contains(em.Str("failed"), "disk-mapper.service") {
		t.Errorf("%s: emergency without disk-mapper.service failed: %s", b.label, em.Raw)
	}
	if !strings.Contains(em.Str("why"), "Failed to configure disk-mapper") || !strings.Contains(em.Str("why"), "not-an-endpoint") {
		t.Errorf("%s: emergency does not say why: %s", b.label, em.Raw)
	}
	if err := b.Wait(); err != nil {
		t.Fatalf("%s: QEMU after emergency: %v", b.label, err)
	}
	noWorkloadYet(t, b, "after the daemon failed")
	t.Logf("%s: emergency after %v (QEMU exited after %v)", b.label, em.At.Round(time.Millisecond), b.ExitedAfter().Round(time.Millisecond))
}

// Socket hand-over: a disk made on the default systemd image, then booted
// on the socket variant (crypttab names /run/disk-mapper/key.sock): the
// daemon verifies the key, closes its mapping and hands the key to
// systemd-cryptsetup@state, which maps the disk; no key file exists
// anywhere; the workload sees the first boot's record. The JoinService
// attests the variant's own PCRs (another image, LISTEN_FDS measured).
func TestSystemdSocketHandover(t *testing.T) {
	scenario(t)
	s := getSuite(t)
	img := systemdImage(t, s, "", "", false)
	sock := systemdImage(t, s, "socket", systemdArgs+" --key-handover-socket=state", true)
	ctx := scenarioContext(t)
	js := s.startJoinServiceMeasured(ctx, t, img.measurementsFor(t, s.dir, nil))
	n := s.newNode(ctx, t, "node-s5")
	uuid := sysFirstBoot(ctx, t, n, img, js)
	js.stop()

	js = s.startJoinServiceMeasured(ctx, t, sock.measurementsFor(t, s.dir, nil))
	b := n.sysBoot(ctx, t, sock, sysOpts{label: "socket hand-over [systemd]", peers: []peer{js.peer()}})
	if got := b.mustMsg(ctx, t, "Preparing existing state disk").Str("uuid"); got != uuid {
		t.Errorf("%s: disk uuid %s, want %s", b.label, got, uuid)
	}
	waiting := b.must(ctx, t, waitingLine, "waiting line")
	b.summary(ctx, t, "RejoinClient", false)
	b.mustMsg(ctx, t, "Closed our mapping; systemd-cryptsetup maps the disk")
	served := b.mustMsg(ctx, t, "Disk key handed to systemd-cryptsetup")
	if !keysocketPeer.MatchString(served.Str("peer")) {
		t.Errorf("%s: key served to %q, not systemd-cryptsetup of state", b.label, served.Str("peer"))
	}
	ticket, _ := js.lastTicket(uuid)
	w := sysWorkload(ctx, t, b, served, 1)
	recordBoot(t, b, waiting, w, "ticket", ticket)
	if f := w.Str("key_files"); f != "" {
		t.Errorf("%s: key files left for the boot: %s", b.label, f)
	}
	sysFinish(ctx, t, b)
}

var keysocketPeer = regexp.MustCompile(`^@[0-9a-f]{1,16}/cryptsetup/state$`)
