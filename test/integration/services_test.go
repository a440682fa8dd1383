//go:build vmtest

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Guest-side addresses (slirp, restrict=on): the guest reaches exactly these,
// each forwarded to a service on 127.0.0.1.
const (
	guestMetadataAddr = "10.0.2.99:8080"
	guestJoinIP       = "10.0.2.100" // the live JoinService (its certificate names this IP)
	guestSilentIP     = "10.0.2.101" // a control-plane peer that accepts and never answers
	guestClosedIP     = "10.0.2.102" // a control-plane peer whose port is closed
)

// hostLine is one JSON log line of a host service, timestamped on arrival.
type hostLine struct {
	at     time.Time
	fields map[string]any
}

func (l hostLine) str(k string) string {
	if v, ok := l.fields[k].(string); ok {
		return v
	}
	return ""
}

// hostProc is a service the suite runs on the host (joinservice, metadata):
// its stderr JSON lines are collected, and it is stopped by PID.
type hostProc struct {
	name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	lines   []hostLine
	changed chan struct{}
	exited  bool
	done    chan struct{}
}

func startHostProc(t *testing.T, name string, argv ...string) *hostProc {
	t.Helper()
	p := &hostProc{name: name, cmd: exec.Command(argv[0], argv[1:]...), changed: make(chan struct{}), done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go p.read(stderr)
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			for _, l := range p.Lines() {
				b, _ := json.Marshal(l.fields)
				t.Logf("%s: %s", name, b)
			}
		}
	})
	return p
}

func (p *hostProc) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := hostLine{at: time.Now()}
		raw := sc.Text()
		if i := strings.IndexByte(raw, '{'); i >= 0 {
			_ = json.Unmarshal([]byte(raw[i:]), &l.fields)
		}
		if l.fields == nil {
			l.fields = map[string]any{"raw": raw}
		}
		p.mu.Lock()
		p.lines = append(p.lines, l)
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
	_ = p.cmd.Wait()
	p.mu.Lock()
	p.exited = true
	close(p.changed)
	p.mu.Unlock()
	close(p.done)
}

// Lines returns a copy of every line so far.
func (p *hostProc) Lines() []hostLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]hostLine(nil), p.lines...)
}

// waitMsg waits for the first line whose msg is msg.
func (p *hostProc) waitMsg(ctx context.Context, msg string) (hostLine, error) {
	for next := 0; ; {
		p.mu.Lock()
		for ; next < len(p.lines); next++ {
			if p.lines[next].str("msg") == msg {
				l := p.lines[next]
				p.mu.Unlock()
				return l, nil
			}
		}
		exited, changed := p.exited, p.changed
		p.mu.Unlock()
		if exited {
			return hostLine{}, fmt.Errorf("%s exited without %q", p.name, msg)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return hostLine{}, fmt.Errorf("%s: waiting for %q: %w", p.name, msg, ctx.Err())
		}
	}
}

// stop sends SIGTERM by PID, then SIGKILL after 5 s.
func (p *hostProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// listenPort reads the bound port from the service's start line.
func listenPort(l hostLine) (int, error) {
	_, port, err := net.SplitHostPort(l.str("endpoint"))
	if err != nil {
		return 0, fmt.Errorf("start line without endpoint: %v", l.fields)
	}
	return strconv.Atoi(port)
}

// joinService is the reference JoinService on 127.0.0.1, validating nodes
// with the platform CA (AK certificates in NV) and the image's measurements.
type joinService struct {
	*hostProc
	port int
}

func (s *suite) startJoinService(ctx context.Context, t *testing.T) *joinService {
	t.Helper()
	return s.startJoinServiceFor(ctx, t, bootOpts{})
}

// startJoinServiceFor starts a JoinService that accepts nodes booted like
// o (its daemon flags: integrity, o.extra); o's test actions do not matter.
func (s *suite) startJoinServiceFor(ctx context.Context, t *testing.T, o bootOpts) *joinService {
	t.Helper()
	return s.startJoinServiceWith(ctx, t, s.mustMeasurements(t, o))
}

// startJoinServiceForCmdline starts a JoinService that accepts nodes booted
// with exactly this kernel command line (its test actions do not matter).
func (s *suite) startJoinServiceForCmdline(ctx context.Context, t *testing.T, cmdline []string) *joinService {
	t.Helper()
	m, err := s.measurementsForCmdline(cmdline)
	if err != nil {
		t.Fatalf("expected measurements: %v", err)
	}
	return s.startJoinServiceWith(ctx, t, m)
}

func (s *suite) startJoinServiceWith(ctx context.Context, t *testing.T, measurements string) *joinService {
	t.Helper()
	p := startHostProc(t, "joinservice", s.bin.joinservice,
		"--listen", "127.0.0.1:0", "--master-secret", s.masterSecret,
		"--cert", s.joinCert, "--key", s.joinKey,
		"--measurements", measurements, "--ak-roots", s.platformCA)
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

// lastTicket is when the JoinService last issued a ticket for uuid.
func (j *joinService) lastTicket(uuid string) (time.Time, bool) {
	var at time.Time
	for _, l := range j.Lines() {
		if l.str("msg") == "Issued rejoin ticket" && (uuid == "" || l.str("uuid") == uuid) {
			at = l.at
		}
	}
	return at, !at.IsZero()
}

// peer is one control-plane record a node's metadata server lists, and
// where the guest's connections to vpcIP:30090 go on the host.
type peer struct {
	name, vpcIP string
	hostPort    int
}

// startMetadata runs the metadata API for one node (under slirp every guest
// is 10.0.2.15, so /self needs a server per node) listing the node as a
// worker plus peers as control-plane nodes.
func (s *suite) startMetadata(ctx context.Context, t *testing.T, self string, peers []peer) int {
	t.Helper()
	args := []string{s.bin.metadata, "--listen", "127.0.0.1:0", "--self", self,
		"--instance", self + ",Worker,10.0.2.15"}
	for _, p := range peers {
		args = append(args, "--instance", fmt.Sprintf("%s,ControlPlane,%s", p.name, p.vpcIP))
	}
	p := startHostProc(t, "metadata-"+self, args...)
	started, err := p.waitMsg(ctx, "Serving metadata API")
	if err != nil {
		t.Fatal(err)
	}
	port, err := listenPort(started)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// livePeer is the JoinService as a control-plane peer.
func (j *joinService) peer() peer { return peer{name: "cp-0", vpcIP: guestJoinIP, hostPort: j.port} }

// deadPeers are the two ways a JoinService endpoint is dead, both on
// loopback: a listener that accepts and never answers, and a closed port.
func deadPeers(t *testing.T) []peer {
	t.Helper()
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	return []peer{
		{name: "cp-1", vpcIP: guestSilentIP, hostPort: silent.Addr().(*net.TCPAddr).Port},
		{name: "cp-2", vpcIP: guestClosedIP, hostPort: closedPort},
	}
}

// dmctlResult is one run of the real dmctl binary.
type dmctlResult struct {
	started, ended time.Time
	exitCode       int
	stdout, stderr string
}

// dmctlRecover runs `dmctl recover -e A [-e B …]` with the cluster's (or
// another) master secret, validating the nodes like the JoinService does
// against the measurements file given (a boot's own: boot.measurements).
func (s *suite) dmctlRecover(ctx context.Context, t *testing.T, secret, measurements string, endpoints ...string) dmctlResult {
	t.Helper()
	args := []string{"recover", "--master-secret", secret, "--measurements", measurements,
		"--ak-roots", s.platformCA, "--timeout", "2m", "--client-cert", s.operatorCert, "--client-key", s.operatorKey}
	for _, e := range endpoints {
		args = append(args, "-e", e)
	}
	cmd := exec.CommandContext(ctx, s.bin.dmctl, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	res := dmctlResult{started: time.Now()}
	err := cmd.Run()
	res.ended = time.Now()
	res.stdout, res.stderr = stdout.String(), stderr.String()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		res.exitCode = exitErr.ExitCode()
	default:
		t.Fatalf("dmctl: %v", err)
	}
	t.Logf("dmctl recover %v (%v) exit %d\nstdout:\n%sstderr:\n%s", endpoints,
		res.ended.Sub(res.started).Round(time.Millisecond), res.exitCode, res.stdout, res.stderr)
	return res
}
