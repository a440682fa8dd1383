package vmtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// Defaults for Config fields left zero.
const (
	DefaultTimeout  = 3 * time.Minute
	DefaultMemoryMB = 512
	// termGrace is how long QEMU gets after SIGTERM before SIGKILL.
	termGrace = 5 * time.Second
	// slirpNet is QEMU user networking's guest network; forwards must stay in it.
	slirpNet = "10.0.2.0/24"
)

// ErrExited is returned by WaitFor when the VM exits without the line.
var ErrExited = errors.New("vm exited")

// Forward makes a host service on 127.0.0.1 reachable from the guest at a
// guest-visible address (slirp guestfwd; one busybox nc per connection).
type Forward struct {
	// Guest is the address the guest dials, in 10.0.2.0/24, e.g. "10.0.2.100:30090".
	Guest string
	// HostPort is the port on 127.0.0.1 the connection is relayed to.
	HostPort int
}

// Config describes one boot.
type Config struct {
	// Disk is the state disk (/dev/vda), a raw file; created sparse with
	// DiskSize bytes if absent. Reuse the path to boot the same disk again.
	Disk     string
	DiskSize int64
	// SecondDisk (/dev/vdb) is optional, created like Disk.
	SecondDisk     string
	SecondDiskSize int64
	// TPMStateDir enables a swtpm TPM (tpm-tis) on this state dir; reuse it
	// to keep NV across boots. Empty: no TPM.
	TPMStateDir string
	// Kernel and Initrd default to build/kernel/vmlinux and build/image/initrd.cpio.
	Kernel, Initrd string
	// Cmdline holds extra kernel parameters, e.g. "dm.attestation=tpm",
	// "dm.write=NAME:CONTENT" (see image/README.md). Later ones win.
	Cmdline []string
	// Forwards are the only host services the guest can reach
	// (the network is always restrict=on).
	Forwards []Forward
	// RecoveryGuestPort is forwarded from a free 127.0.0.1 port
	// (RecoveryAddr); 0 means constants.RecoveryPort.
	RecoveryGuestPort int
	// Timeout bounds the VM's life (then SIGTERM, then SIGKILL); 0 means DefaultTimeout.
	Timeout  time.Duration
	MemoryMB int
	// SMP is the number of vCPUs; 0 means 1 (the busybox image gains
	// nothing from more; the systemd image's parallel start does).
	SMP int
}

// VM is a running (or finished) QEMU guest.
type VM struct {
	t            testing.TB
	dir          string
	cmd          *exec.Cmd
	start        time.Time
	recoveryAddr string

	mu       sync.Mutex
	lines    []Line
	changed  chan struct{} // closed and replaced on every new line and at exit
	exited   bool
	exitErr  error
	exitedAt time.Duration
	stopped  string        // why the harness stopped QEMU, if it did
	stderr   string        // the tail of QEMU's own messages (qemu.log), after exit
	done     chan struct{} // closed once QEMU has exited and its output is read
}

// Boot starts QEMU with cfg and returns once it runs; the guest's JSON lines
// are then read in the background. The VM is stopped when ctx ends, when
// cfg.Timeout passes, and at the test's cleanup; its artifacts (console.log,
// serial.jsonl, qemu.log, swtpm.log, qemu.args) stay in a t.TempDir and are
// copied to build/vmtest-artifacts/<test>/ if the test failed.
func Boot(ctx context.Context, t testing.TB, cfg Config) (*VM, error) {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	if cfg.Kernel == "" {
		cfg.Kernel = filepath.Join(root, "build", "kernel", "vmlinux")
	}
	if cfg.Initrd == "" {
		cfg.Initrd = filepath.Join(root, "build", "image", "initrd.cpio")
	}
	for _, f := range []string{cfg.Kernel, cfg.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%w (build the image: make image)", err)
		}
	}
	if cfg.Disk == "" {
		return nil, errors.New("vmtest: Config.Disk is required")
	}
	if err := ensureDisk(cfg.Disk, cfg.DiskSize); err != nil {
		return nil, err
	}
	if cfg.SecondDisk != "" {
		if err := ensureDisk(cfg.SecondDisk, cfg.SecondDiskSize); err != nil {
			return nil, err
		}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = DefaultMemoryMB
	}
	if cfg.SMP == 0 {
		cfg.SMP = 1
	}
	if cfg.RecoveryGuestPort == 0 {
		cfg.RecoveryGuestPort = constants.RecoveryPort
	}

	dir := t.TempDir()
	vm := &VM{t: t, dir: dir, changed: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { vm.cleanup(root) })

	hostPort, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	vm.recoveryAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(hostPort))
	netdev, err := netdevArg(cfg.Forwards, hostPort, cfg.RecoveryGuestPort)
	if err != nil {
		return nil, err
	}

	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "q35", "-accel", "tcg", "-cpu", "max",
		"-m", strconv.Itoa(cfg.MemoryMB), "-smp", strconv.Itoa(cfg.SMP),
		// qboot + PVH vmlinux: no firmware measurements (PCR 0-7 stay zero),
		// but ~3.8 s faster than SeaBIOS + bzImage, and SeaBIOS + PVH + TPM breaks ACPI.
		"-bios", "/usr/share/qemu/qboot.rom",
		"-kernel", cfg.Kernel, "-initrd", cfg.Initrd,
		"-append", KernelCmdline(cfg.Cmdline),
		"-serial", "file:" + filepath.Join(dir, "console.log"), // ttyS0: kernel console
		"-serial", "stdio", // ttyS1: the JSON lines
		"-drive", "if=none,id=state,format=raw,cache=unsafe,file=" + cfg.Disk,
		"-device", "virtio-blk-pci,drive=state",
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=",
		"-device", "virtio-rng-pci",
	}
	if cfg.SecondDisk != "" {
		args = append(args, "-drive", "if=none,id=second,format=raw,cache=unsafe,file="+cfg.SecondDisk,
			"-device", "virtio-blk-pci,drive=second")
	}
	if cfg.TPMStateDir != "" {
		tpm, err := startSwtpm(t, cfg.TPMStateDir, filepath.Join(dir, "swtpm.log"), false)
		if err != nil {
			return nil, err
		}
		args = append(args, "-chardev", "socket,id=chrtpm,path="+tpm.CtrlSocket,
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
	}
	if err := os.WriteFile(filepath.Join(dir, "qemu.args"), []byte(strings.Join(args, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}

	qemuLog, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		return nil, err
	}
	serial, err := os.Create(filepath.Join(dir, "serial.jsonl"))
	if err != nil {
		qemuLog.Close()
		return nil, err
	}
	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	vm.cmd.Stderr = qemuLog
	stdout, err := vm.cmd.StdoutPipe()
	if err != nil {
		qemuLog.Close()
		serial.Close()
		return nil, err
	}
	vm.start = time.Now()
	if err := vm.cmd.Start(); err != nil {
		qemuLog.Close()
		serial.Close()
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go vm.read(stdout, serial, qemuLog)
	go vm.watch(ctx, cfg.Timeout)
	return vm, nil
}

// read collects ttyS1 lines until QEMU closes its stdout, then reaps QEMU.
func (vm *VM) read(stdout interface{ Read([]byte) (int, error) }, serial, qemuLog *os.File) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		at := time.Since(vm.start)
		raw := strings.TrimRight(sc.Text(), "\r")
		fmt.Fprintln(serial, raw)
		vm.mu.Lock()
		vm.lines = append(vm.lines, parseLine(len(vm.lines), at, raw))
		close(vm.changed)
		vm.changed = make(chan struct{})
		vm.mu.Unlock()
	}
	err := vm.cmd.Wait()
	serial.Close()
	qemuLog.Close()
	stderr, _ := os.ReadFile(qemuLog.Name())
	if len(stderr) > 1000 {
		stderr = stderr[len(stderr)-1000:]
	}
	vm.mu.Lock()
	vm.exited, vm.exitErr, vm.exitedAt = true, err, time.Since(vm.start)
	vm.stderr = strings.TrimSpace(string(stderr))
	close(vm.changed)
	vm.changed = make(chan struct{})
	vm.mu.Unlock()
	close(vm.done)
}

// watch stops the VM when ctx ends or the timeout passes.
func (vm *VM) watch(ctx context.Context, timeout time.Duration) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var why string
	select {
	case <-vm.done:
		return
	case <-ctx.Done():
		why = fmt.Sprintf("context ended: %v", context.Cause(ctx))
	case <-timer.C:
		why = fmt.Sprintf("timeout: still running after %v", timeout)
	}
	// No t.Log here: this goroutine can outlive the test. cleanup reports it.
	vm.mu.Lock()
	vm.stopped = why
	vm.mu.Unlock()
	vm.terminate()
}

// terminate sends SIGTERM, then SIGKILL after termGrace, and waits for exit.
func (vm *VM) terminate() {
	_ = vm.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-vm.done:
	case <-time.After(termGrace):
		_ = vm.cmd.Process.Signal(syscall.SIGKILL)
		<-vm.done
	}
}

// Kill pulls the plug: SIGKILL to QEMU by PID, no guest shutdown, no sync
// of the guest's caches (cache=unsafe disks lose what QEMU had not written).
// It returns once QEMU is gone.
func (vm *VM) Kill() error {
	err := vm.cmd.Process.Signal(syscall.SIGKILL)
	<-vm.done
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// Wait blocks until QEMU exits (bounded by the VM's timeout) and returns its
// exit error: nil when the guest powered off.
func (vm *VM) Wait() error {
	<-vm.done
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.exitErr
}

// Done is closed once QEMU has exited.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// ExitedAfter is QEMU's lifetime, once it has exited (0 before).
func (vm *VM) ExitedAfter() time.Duration {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.exitedAt
}

// RecoveryAddr is the host address (127.0.0.1:P) forwarded to the guest's
// recovery port. slirp accepts connections here even before the guest
// listens: wait for "Waiting for decryption key" before dialling.
func (vm *VM) RecoveryAddr() string { return vm.recoveryAddr }

// Dir holds the VM's artifacts.
func (vm *VM) Dir() string { return vm.dir }

// PID is QEMU's process id.
func (vm *VM) PID() int { return vm.cmd.Process.Pid }

// Lines returns a copy of every line so far.
func (vm *VM) Lines() []Line {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return append([]Line(nil), vm.lines...)
}

// Stream delivers every line, from the first, until QEMU exits or ctx ends;
// then the channel is closed. The consumer sets the pace (nothing is dropped).
func (vm *VM) Stream(ctx context.Context) <-chan Line {
	ch := make(chan Line)
	go func() {
		defer close(ch)
		for next := 0; ; {
			vm.mu.Lock()
			pending := append([]Line(nil), vm.lines[next:]...)
			exited, changed := vm.exited, vm.changed
			vm.mu.Unlock()
			for _, l := range pending {
				select {
				case ch <- l:
				case <-ctx.Done():
					return
				}
			}
			next += len(pending)
			if exited && len(pending) == 0 {
				return
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// WaitFor returns the first line, from the VM's first line on, that p
// matches. It fails with ErrExited when QEMU exits without one, and with
// ctx's error when ctx ends first.
func (vm *VM) WaitFor(ctx context.Context, p Predicate) (Line, error) {
	return vm.WaitForFrom(ctx, 0, p)
}

// WaitForFrom is WaitFor starting at line index from (e.g. last.Index+1, to
// wait for the next occurrence).
func (vm *VM) WaitForFrom(ctx context.Context, from int, p Predicate) (Line, error) {
	for next := from; ; {
		vm.mu.Lock()
		for ; next < len(vm.lines); next++ {
			if p(vm.lines[next]) {
				l := vm.lines[next]
				vm.mu.Unlock()
				return l, nil
			}
		}
		exited, exitErr, changed := vm.exited, vm.exitErr, vm.changed
		vm.mu.Unlock()
		if exited {
			vm.mu.Lock()
			if vm.stopped != "" {
				exitErr = fmt.Errorf("%v; stopped by the harness: %s", exitErr, vm.stopped)
			}
			if vm.stderr != "" {
				exitErr = fmt.Errorf("%v; qemu said: %s", exitErr, vm.stderr)
			}
			vm.mu.Unlock()
			return Line{}, fmt.Errorf("%w (exit: %v) after %d lines without the awaited one; last: %s",
				ErrExited, exitErr, next, vm.lastLines(5))
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Line{}, fmt.Errorf("waiting for a VM line: %w; last: %s", ctx.Err(), vm.lastLines(5))
		}
	}
}

func (vm *VM) lastLines(n int) string {
	ls := vm.Lines()
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	var b strings.Builder
	for _, l := range ls {
		b.WriteString("\n  " + l.String())
	}
	return b.String()
}

// cleanup stops QEMU if it still runs and keeps the artifacts of a failed test.
func (vm *VM) cleanup(root string) {
	if vm.cmd != nil && vm.cmd.Process != nil {
		select {
		case <-vm.done:
		default:
			vm.terminate()
		}
	}
	vm.mu.Lock()
	stopped := vm.stopped
	vm.mu.Unlock()
	if strings.HasPrefix(stopped, "timeout") {
		vm.t.Errorf("vmtest: QEMU pid %d %s", vm.cmd.Process.Pid, stopped)
	}
	if vm.t.Failed() {
		if dst, err := keepArtifacts(root, vm.t.Name(), vm.dir); err != nil {
			vm.t.Logf("vmtest: keeping artifacts: %v", err)
		} else {
			vm.t.Logf("vmtest: artifacts in %s", dst)
		}
	}
}

// KernelCmdline is the kernel command line Boot gives a VM with the extra
// parameters cmdline (Config.Cmdline).
func KernelCmdline(cmdline []string) string {
	return strings.Join(append([]string{"console=ttyS0", "quiet", "panic=-1"}, cmdline...), " ")
}

// ensureDisk creates a sparse raw disk of size bytes if path does not exist.
func ensureDisk(path string, size int64) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if size <= 0 {
		return fmt.Errorf("vmtest: disk %s does not exist and no size was given", path)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// netdevArg builds the user-network option: always restrict=on (the guest
// reaches nothing but the forwards), forwards only to 127.0.0.1.
func netdevArg(forwards []Forward, recoveryHostPort, recoveryGuestPort int) (string, error) {
	slirp := netip.MustParsePrefix(slirpNet)
	parts := []string{"user", "id=n0", "restrict=on",
		fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:%d", recoveryHostPort, recoveryGuestPort)}
	for _, f := range forwards {
		ap, err := netip.ParseAddrPort(f.Guest)
		if err != nil {
			return "", fmt.Errorf("vmtest: forward guest address %q: %w", f.Guest, err)
		}
		if !slirp.Contains(ap.Addr()) {
			return "", fmt.Errorf("vmtest: forward guest address %s is outside %s", ap, slirpNet)
		}
		if f.HostPort <= 0 || f.HostPort > 65535 {
			return "", fmt.Errorf("vmtest: forward %s: bad host port %d", ap, f.HostPort)
		}
		parts = append(parts, fmt.Sprintf("guestfwd=tcp:%s-cmd:busybox nc 127.0.0.1 %d", ap, f.HostPort))
	}
	return strings.Join(parts, ","), nil
}

// freeLoopbackPort asks the kernel for a free port on 127.0.0.1. Another
// process could take it before QEMU binds it; QEMU then fails to start
// with a clear hostfwd error rather than connecting anywhere else.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
