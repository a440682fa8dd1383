package faults

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/constants"

	"github.com/diskmapper/disk-mapper/internal/prereq"
)

// Key hygiene of the daemon itself (issue item 6): the real cmd/disk-mapper
// binary runs on the host against a file disk with --attestation=dev-insecure.
//
// Non-dumpable proof: the kernel makes /proc/PID/* of a non-dumpable process
// owned by root. So the daemon runs as an unprivileged user (nobody); its
// /proc/PID/status must be owned by root, while a control process run the
// same way is owned by nobody.

const nobody = 65534

func buildDaemon(t *testing.T, dir string) string {
	t.Helper()
	goBin := prereq.NeedTool(t, "go", "the Go toolchain in /usr/local/go/bin")
	root, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(dir, "disk-mapper")
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/disk-mapper")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the daemon: %v\n%s", err, out)
	}
	return bin
}

// sharedDir is a directory the unprivileged daemon can use.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "faults-daemon-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func procOwner(pid int) (uint32, error) {
	fi, err := os.Stat(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return fi.Sys().(*syscall.Stat_t).Uid, nil
}

func asNobody(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
}

func TestDaemonNonDumpableAndNoKeyFile(t *testing.T) {
	if os.Geteuid() != 0 {
		prereq.Missing(t, "root (to run the daemon as another user)", "run the tests as root")
	}
	dir := sharedDir(t)
	bin := buildDaemon(t, dir)
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	disk := filepath.Join(dir, "state.img")
	if err := os.Rename(d.path, disk); err != nil {
		// t.TempDir may be on another file system than os.TempDir.
		if err := os.WriteFile(disk, readAll(t, d.path), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{disk, tmp} {
		if err := os.Chown(p, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	before := readAll(t, disk)
	_, handoverBefore := os.Stat(constants.KeyHandoverFile)

	// Control: the same way of starting a process, without PR_SET_DUMPABLE.
	ctl := exec.Command("/bin/sleep", "5")
	asNobody(ctl)
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	ctlOwner, ctlErr := procOwner(ctl.Process.Pid)
	ctl.Process.Kill()
	ctl.Wait()

	dmd := startDaemon(t, bin, dir, []string{"TMPDIR=" + tmp}, asNobody,
		"--state-disk="+disk, "--attestation=dev-insecure", "--recovery-addr=127.0.0.1:0",
		"--tpm-device="+filepath.Join(dir, "no-tpm"), "--integrity=false", "--kernel-cmdline=/dev/null")
	cmd, stdout, addr := dmd.cmd, dmd.stdout, dmd.addr
	owner, ownerErr := procOwner(cmd.Process.Pid)

	_, pushErr := pushKey(addr, operatorCreds(t, nil), randomKey(t), nil, d.key)
	exitErr := dmd.wait(t)

	// No key file anywhere the daemon could write, none at the handover path.
	var keyFiles []string
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || p == disk || p == bin {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, form := range encodings(d.key) {
			if bytes.Contains(b, []byte(form)) {
				keyFiles = append(keyFiles, p)
				break
			}
		}
		return nil
	})
	tmpEntries, _ := os.ReadDir(tmp)
	_, handoverAfter := os.Stat(constants.KeyHandoverFile)
	handoverCreated := os.IsNotExist(handoverBefore) && !os.IsNotExist(handoverAfter)

	got := fmt.Sprintf("/proc/PID/status owner %d while waiting (control process: %d); push %s; exit %v; key files %v; temp files left %d; %s created %v",
		owner, ctlOwner, code(pushErr), exitErr, keyFiles, len(tmpEntries), constants.KeyHandoverFile, handoverCreated)
	survived := ownerErr == nil && ctlErr == nil && owner == 0 && ctlOwner == nobody && pushErr == nil &&
		strings.Contains(stdout.String(), "Received state disk key and measurement secret, shutting down server") &&
		len(keyFiles) == 0 && len(tmpEntries) == 0 && !handoverCreated
	record(t, outcome{Case: "hygiene: daemon binary non-dumpable, no key file (no --key-handover-file)",
		Expected: "non-dumpable while it waits for/holds a key; no key file", Got: got, Survived: survived,
		DataLost: changedBytes(before, readAll(t, disk), headerRegion)})
}

// daemon is the real disk-mapper binary running on the host, waiting for a
// key on its RecoveryServer at addr.
type daemon struct {
	cmd    *exec.Cmd
	stdout *logSink
	addr   string
	exited chan error
	lines  chan map[string]any
}

// startDaemon runs bin with args and env (plus a PATH) in dir, prepared by
// prepare (may be nil), and returns once it logged its listener address and
// "Waiting for decryption key".
func startDaemon(t *testing.T, bin, dir string, env []string, prepare func(*exec.Cmd), args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(env, "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.Dir = dir
	if prepare != nil {
		prepare(cmd)
	}
	d := &daemon{cmd: cmd, stdout: keepOutput(t, "daemon-stdout"), exited: make(chan error, 1), lines: make(chan map[string]any, 100)}
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			d.stdout.Write(append(sc.Bytes(), '\n'))
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				d.lines <- m
			}
		}
		close(d.lines)
		d.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // by PID; a no-op once Wait has reaped it
	})

	waiting := false
	guard := time.After(hangGuard)
	for !waiting || d.addr == "" {
		select {
		case m, ok := <-d.lines:
			if !ok {
				t.Fatalf("daemon exited early\nstdout:\n%s\nstderr:\n%s", d.stdout, &stderr)
			}
			if m["msg"] == "Starting RecoveryServer" {
				d.addr = fmt.Sprint(m["address"])
			}
			waiting = waiting || m["msg"] == "Waiting for decryption key"
		case <-guard:
			t.Fatalf("daemon never waited for a key\nstdout:\n%s\nstderr:\n%s", d.stdout, &stderr)
		}
	}
	return d
}

// wait returns the daemon's exit once it ended (the hang guard fails the
// test otherwise).
func (d *daemon) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-d.exited:
		for range d.lines {
		}
		return err
	case <-time.After(hangGuard):
		t.Fatalf("daemon did not exit\nstdout:\n%s", d.stdout)
		return nil
	}
}

// stop ends the daemon by its PID if it still runs.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	_ = d.wait(t)
}
