package vmtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// swtpm's control-channel command that saves state and exits (CMD_SHUTDOWN
// in swtpm's tpm_ioctl.h). Not the mssim platform protocol: never send
// go-tpm's PowerOn/Reset to swtpm.
const swtpmCmdShutdown = 3

// swtpmExitGrace is how long a swtpm gets to exit on its own (--terminate
// after QEMU disconnects, or after CMD_SHUTDOWN) before it is SIGKILLed.
const swtpmExitGrace = 3 * time.Second

// Swtpm is one swtpm process, stopped by PID when the test ends.
type Swtpm struct {
	// CtrlSocket is the control channel (QEMU's -chardev socket path).
	CtrlSocket string
	// ServerSocket is the TPM command channel of a host-mode swtpm
	// (for go-tpm's linuxudstpm.Open); empty for the QEMU mode.
	ServerSocket string

	cmd    *exec.Cmd
	exited chan struct{}
}

// StartSwtpm starts a swtpm for QEMU on stateDir (created if missing; reuse
// it to keep NV across boots): control channel only, --terminate, so it
// exits when QEMU disconnects. It is killed by PID at cleanup at the latest.
func StartSwtpm(t testing.TB, stateDir string) (*Swtpm, error) {
	return startSwtpm(t, stateDir, filepath.Join(stateDir, "swtpm.log"), false)
}

// StartHostSwtpm starts a swtpm the host talks to directly (command channel
// on ServerSocket; already initialised and started up, so go-tpm works on it
// at once). Stop it with Shutdown before booting a VM on the same state dir.
func StartHostSwtpm(t testing.TB, stateDir string) (*Swtpm, error) {
	return startSwtpm(t, stateDir, filepath.Join(stateDir, "swtpm-host.log"), true)
}

func startSwtpm(t testing.TB, stateDir, logPath string, hostMode bool) (*Swtpm, error) {
	t.Helper()
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	// Unix socket paths are limited to 108 bytes; t.TempDir paths of long
	// test names are not, so the sockets live in a short directory.
	sockDir, err := os.MkdirTemp("", "vmtpm")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	s := &Swtpm{CtrlSocket: filepath.Join(sockDir, "ctrl.sock"), exited: make(chan struct{})}

	// The harness creates the listening sockets and hands them over as fds,
	// so they exist before swtpm runs: no waiting for a file to appear.
	ctrl, err := listenUnixFile(s.CtrlSocket)
	if err != nil {
		return nil, err
	}
	defer ctrl.Close()
	args := []string{"socket", "--tpm2", "--tpmstate", "dir=" + stateDir,
		"--ctrl", "type=unixio,fd=3",
		"--log", "file=" + logPath + ",level=1"}
	files := []*os.File{ctrl}
	if hostMode {
		s.ServerSocket = filepath.Join(sockDir, "server.sock")
		server, err := listenUnixFile(s.ServerSocket)
		if err != nil {
			return nil, err
		}
		defer server.Close()
		files = append(files, server)
		args = append(args, "--server", "type=unixio,fd=4", "--flags", "not-need-init,startup-clear")
	} else {
		args = append(args, "--terminate")
	}
	s.cmd = exec.Command("swtpm", args...)
	s.cmd.ExtraFiles = files
	s.cmd.Stdout, s.cmd.Stderr = os.Stderr, os.Stderr
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start swtpm: %w", err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() { s.stop(swtpmExitGrace) })
	return s, nil
}

// listenUnixFile creates a listening unix socket at path and returns its fd
// as a file for exec.Cmd.ExtraFiles.
func listenUnixFile(path string) (*os.File, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false) // the socket stays for swtpm and QEMU
	f, err := l.File()
	l.Close()
	return f, err
}

// PID is swtpm's process id.
func (s *Swtpm) PID() int { return s.cmd.Process.Pid }

// Shutdown asks swtpm to save its state and exit (CMD_SHUTDOWN on the
// control channel), waits for it, and kills it by PID if it does not exit.
func (s *Swtpm) Shutdown(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", s.CtrlSocket)
	if err == nil {
		deadline := time.Now().Add(swtpmExitGrace)
		conn.SetDeadline(deadline)
		err = binary.Write(conn, binary.BigEndian, uint32(swtpmCmdShutdown))
		var result uint32
		if err == nil {
			err = binary.Read(conn, binary.BigEndian, &result)
		}
		if err == nil && result != 0 {
			err = fmt.Errorf("swtpm CMD_SHUTDOWN returned TPM result %#x", result)
		}
		conn.Close()
	}
	if stopErr := s.stop(swtpmExitGrace); err == nil {
		err = stopErr
	}
	return err
}

// stop waits up to grace for swtpm to exit, then SIGKILLs it by PID.
func (s *Swtpm) stop(grace time.Duration) error {
	select {
	case <-s.exited:
		return nil
	case <-time.After(grace):
	}
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-s.exited
	return fmt.Errorf("swtpm (pid %d) did not exit within %v and was killed", s.PID(), grace)
}

// ProvisionFunc provisions a TPM through the command socket of a host-mode
// swtpm (go-tpm: linuxudstpm.Open(socket)).
type ProvisionFunc func(ctx context.Context, socket string) error

// ProvisionTPM runs provision against a host-mode swtpm on stateDir, then
// shuts the swtpm down so the NV state is on disk before a VM boots on it
// (the harness plays the cloud that puts an AK certificate into NV).
func ProvisionTPM(ctx context.Context, t testing.TB, stateDir string, provision ProvisionFunc) error {
	t.Helper()
	s, err := StartHostSwtpm(t, stateDir)
	if err != nil {
		return err
	}
	provErr := provision(ctx, s.ServerSocket)
	if err := s.Shutdown(ctx); err != nil && provErr == nil {
		return fmt.Errorf("swtpm shutdown after provisioning: %w", err)
	}
	return provErr
}

// ProvisionCommand runs argv (e.g. build/bin/tpm-provision …) as a provision
// step. Every "{tpm}" in argv becomes the TPM socket path, which is also in
// the environment as VMTEST_TPM_SOCKET. Its output goes to the test log.
func ProvisionCommand(t testing.TB, argv ...string) ProvisionFunc {
	return func(ctx context.Context, socket string) error {
		args := make([]string, len(argv))
		for i, a := range argv {
			args[i] = strings.ReplaceAll(a, "{tpm}", socket)
		}
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "VMTEST_TPM_SOCKET="+socket)
		out, err := cmd.CombinedOutput()
		t.Logf("provision %v:\n%s", args, out)
		if err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		return nil
	}
}
