// Package attestationtest starts real software TPMs (swtpm) for tests. It is
// imported only by _test.go files.
package attestationtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/diskmapper/disk-mapper/internal/prereq"
)

// SwTPM is one running swtpm process that serves TPM 2.0 commands on a unix
// socket. Its state directory holds the TPM's seeds and NV, so a second
// SwTPM started on the same directory is the same TPM after a reboot: NV and
// keys survive, PCRs are reset.
type SwTPM struct {
	StateDir   string
	ServerPath string
	cmd        *exec.Cmd
	done       chan struct{}
}

// StartSwTPM starts swtpm on stateDir (a fresh temporary directory if empty)
// and stops it, by PID, in t.Cleanup. The test is skipped when swtpm is not
// installed.
func StartSwTPM(t testing.TB, stateDir string) *SwTPM {
	t.Helper()
	bin := prereq.NeedTool(t, "swtpm", "swtpm")
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	// Unix socket paths are limited to 108 bytes; t.TempDir() paths can be
	// longer, so the sockets live in a short directory of their own.
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatalf("socket dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })

	s := &SwTPM{
		StateDir:   stateDir,
		ServerPath: filepath.Join(sockDir, "server.sock"),
		done:       make(chan struct{}),
	}
	s.cmd = exec.Command(bin, "socket", "--tpm2",
		"--server", "type=unixio,path="+s.ServerPath,
		"--ctrl", "type=unixio,path="+filepath.Join(sockDir, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+stateDir,
		"--log", "file="+filepath.Join(sockDir, "swtpm.log")+",level=1",
	)
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.Stop)

	if err := s.waitReady(10 * time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(sockDir, "swtpm.log"))
		t.Fatalf("swtpm not ready: %v\nswtpm log:\n%s", err, log)
	}
	return s
}

// waitReady polls until a TPM command succeeds: swtpm creates the socket
// file before it accepts connections.
func (s *SwTPM) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return errors.New("swtpm exited")
		default:
		}
		if s.ping() == nil {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no socket %s after %v", s.ServerPath, timeout)
}

func (s *SwTPM) ping() error {
	t, err := s.Open()
	if err != nil {
		return err
	}
	defer t.Close()
	_, err = tpm2.GetRandom{BytesRequested: 1}.Execute(t)
	return err
}

// Open connects to the TPM; it matches the open function the attestation
// package takes.
func (s *SwTPM) Open() (transport.TPMCloser, error) {
	return linuxudstpm.Open(s.ServerPath)
}

// Stop terminates this swtpm by its PID and waits for it. It is idempotent.
func (s *SwTPM) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}
