package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/afero"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/internal/prereq"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/recoverproto"
	"github.com/diskmapper/disk-mapper/recoveryserver"
	"github.com/diskmapper/disk-mapper/setup"
)

// The operator's worst day (issue 10): every answer the node and dmctl give
// must be true. The real RecoveryServer and setup.Race on a real LUKS2 file,
// the real dmctl binary, and the real daemon binary where the case needs it.

// buildDmctl builds cmd/dmctl into dir.
func buildDmctl(t *testing.T, dir string) string {
	t.Helper()
	goBin := prereq.NeedTool(t, "go", "the Go toolchain in /usr/local/go/bin")
	root, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(dir, "dmctl")
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/dmctl")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building dmctl: %v\n%s", err, out)
	}
	return bin
}

// dmctlRun is one run of the dmctl binary.
type dmctlRun struct {
	exit           int
	stdout, stderr string
	took           time.Duration
}

func runDmctlBin(t *testing.T, bin string, args ...string) dmctlRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*hangGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	r := dmctlRun{stdout: out.String(), stderr: errOut.String(), took: time.Since(start)}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		r.exit = exitErr.ExitCode()
	default:
		t.Fatalf("running dmctl: %v", err)
	}
	return r
}

// newMasterSecret writes a master secret with the dmctl binary and loads it.
func newMasterSecret(t *testing.T, bin, dir string) (string, masterkey.MasterSecret) {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("secret-%d.json", time.Now().UnixNano()))
	if r := runDmctlBin(t, bin, "master-secret", "new", "--out", path); r.exit != 0 {
		t.Fatalf("dmctl master-secret new: %d %s", r.exit, r.stderr)
	}
	s, err := masterkey.Load(afero.NewOsFs(), path)
	if err != nil {
		t.Fatal(err)
	}
	usedKey(s.Key)
	return path, s
}

func diskKeyOf(t testing.TB, s masterkey.MasterSecret) func(string) []byte {
	return func(uuid string) []byte {
		k, err := s.DiskKey(uuid)
		if err != nil {
			t.Fatal(err)
		}
		return usedKey(k)
	}
}

// ticketFrom is the key the JoinService would hand out for uuid.
func ticketFrom(t testing.TB, s masterkey.MasterSecret, uuid string) unlock.Key {
	ms, err := s.MeasurementSecret()
	if err != nil {
		t.Fatal(err)
	}
	return unlock.Key{DiskKey: diskKeyOf(t, s)(uuid), MeasurementSecret: usedKey(ms)}
}

// pendingStream is a Recover stream that sent its measurement_secret and got
// the disk UUID: the next message is its key.
type pendingStream struct {
	conn   *grpc.ClientConn
	stream grpc.BidiStreamingClient[recoverproto.RecoverMessage, recoverproto.RecoverResponse]
	cancel context.CancelFunc
}

func openPending(t *testing.T, addr string, secret []byte) *pendingStream {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(operatorCreds(t, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	stream, err := recoverproto.NewAPIClient(conn).Recover(ctx)
	if err == nil {
		err = stream.Send(secretMsg(secret, nil))
	}
	if err == nil {
		_, err = stream.Recv()
	}
	if err != nil {
		cancel()
		conn.Close()
		t.Fatalf("opening a pending push: %v", err)
	}
	p := &pendingStream{conn: conn, stream: stream, cancel: cancel}
	t.Cleanup(func() { p.cancel(); p.conn.Close() })
	return p
}

// finish sends key and returns the stream's status.
func (p *pendingStream) finish(key []byte) error {
	_ = p.stream.Send(keyMsg(key)) // a failed Send's status comes with Recv
	_ = p.stream.CloseSend()
	for {
		if _, err := p.stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// A wrong key that arrives just after the right one is checked, not waved
// away: the operator holds another master secret and must learn it. The
// same key again is "already unlocked", a distinct status.
func TestOperatorWrongKeyJustAfterRightKey(t *testing.T) {
	n := startRecovery(t, nil, nil)
	secret := randomKey(t)
	wrong := openPending(t, n.addr, secret)
	again := openPending(t, n.addr, secret)

	_, rightErr := pushKey(n.addr, operatorCreds(t, nil), secret, nil, n.disk.key)
	wrongErr := wrong.finish(randomKey(t))
	againErr := again.finish(n.disk.key)
	res := n.result(t)

	got := fmt.Sprintf("right push %s; wrong key 1 ms later %s (%s); same key again %s (%s); race %v",
		code(rightErr), code(wrongErr), status.Convert(wrongErr).Message(), code(againErr), status.Convert(againErr).Message(), res.err)
	survived := rightErr == nil && res.err == nil &&
		code(wrongErr) == "PermissionDenied" &&
		code(againErr) == "AlreadyExists" && strings.Contains(status.Convert(againErr).Message(), "already unlocked by an operator's push")
	record(t, outcome{Case: "operator: wrong key just after the right one", Expected: "right OK, wrong PermissionDenied, same AlreadyExists",
		Got: got, Survived: survived})
	if !survived {
		t.Errorf("%s\nlogs:\n%s", got, n.logs)
	}
}

// scriptedRejoin is the RejoinClient's part in the race: once told, it
// offers the JoinService's ticket; offered is closed once its check returned.
type scriptedRejoin struct {
	ticket  unlock.Key
	fire    chan struct{}
	offered chan struct{}
}

func (s *scriptedRejoin) Name() string { return "RejoinClient" }

func (s *scriptedRejoin) Serve(ctx context.Context, check unlock.Check) error {
	select {
	case <-s.fire:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer close(s.offered)
	return check(ctx, s.ticket)
}

// gatedRecovery is the real RecoveryServer whose pushed key reaches the race
// only after the rejoin ticket was offered: the ticket lands while the push
// is in flight, deterministically.
type gatedRecovery struct {
	*recoveryserver.Server
	rejoin *scriptedRejoin
}

func (g gatedRecovery) Serve(ctx context.Context, check unlock.Check) error {
	var once sync.Once
	return g.Server.Serve(ctx, func(c context.Context, k unlock.Key) error {
		once.Do(func() {
			close(g.rejoin.fire)
			<-g.rejoin.offered
		})
		return check(c, k)
	})
}

// A right push racing a winning rejoin: dmctl must return at once with
// "already unlocked", exit 0, instead of Unavailable: EOF and retries until
// --timeout for a node that did unlock.
func TestOperatorPushRacingWinningRejoin(t *testing.T) {
	dir := t.TempDir()
	bin := buildDmctl(t, dir)
	secretPath, secret := newMasterSecret(t, bin, dir)
	disk := newOurDisk(t, diskencryption.StateInitialized, diskKeyOf(t, secret))
	dev, err := diskencryption.Open(disk.path)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	log, logs := newLog(t, constants.LoggerSetup)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := recoveryserver.New(recoveryserver.Config{DiskUUID: disk.uuid, Listener: lis,
		Credentials: atls.NewCredentials(atls.Config{Issuer: attestation.NewDevIssuer(log.Named("attestation"))}),
		Log:         log.Named(constants.LoggerRecoveryServer)})
	rejoin := &scriptedRejoin{ticket: ticketFrom(t, secret, disk.uuid), fire: make(chan struct{}), offered: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 4*hangGuard)
	defer cancel()
	raced := make(chan raceOutcome, 1)
	go func() {
		// The rejoin wins while the push is in flight: after the node
		// took the push's key, before the race saw it.
		res, err := setup.Race(ctx, log, func(k unlock.Key) error { return dev.CheckKey(k.DiskKey) },
			gatedRecovery{srv, rejoin}, rejoin)
		raced <- raceOutcome{res, err}
	}()

	r := runDmctlBin(t, bin, "recover", "-e", lis.Addr().String(), "--master-secret", secretPath,
		"--insecure-dev-attestation", "--timeout", "20s")
	var race raceOutcome
	select {
	case race = <-raced:
	case <-time.After(hangGuard):
		t.Fatalf("race did not end\n%s", logs)
	}
	got := fmt.Sprintf("dmctl exit %d after %v, stdout %q, stderr %q; race won by %s",
		r.exit, r.took.Round(time.Millisecond), strings.TrimSpace(r.stdout), lastLine(r.stderr), race.res.Source)
	survived := r.exit == 0 && r.took < 3*time.Second && race.err == nil && race.res.Source == "RejoinClient" &&
		strings.Contains(r.stdout, "already unlocked by its JoinService")
	record(t, outcome{Case: "operator: right push racing a winning rejoin (dmctl binary)",
		Expected: "dmctl exit 0 within 3 s: already unlocked by its JoinService", Got: got, Survived: survived})
	if !survived {
		t.Errorf("%s\nstderr:\n%s\nlogs:\n%s", got, r.stderr, logs)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// daemonArgs are the host daemon's flags for a file disk.
func daemonArgs(dir, disk string, extra ...string) []string {
	return append([]string{"--state-disk=" + disk, "--attestation=dev-insecure", "--recovery-addr=127.0.0.1:0",
		"--tpm-device=" + filepath.Join(dir, "no-tpm"), "--integrity=false", "--kernel-cmdline=/dev/null"}, extra...)
}

// daemonLines parses the daemon's JSON lines so far.
func daemonLines(d *daemon) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(d.stdout.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func firstIndex(lines []map[string]any, msg string) int {
	for i, m := range lines {
		if m["msg"] == msg {
			return i
		}
	}
	return -1
}

// A push to a node whose disk is refused (a LUKS2 disk that is not ours; a
// foreign disk without any UUID) is answered with the reason, and dmctl
// prints it: never "malformed key", never `malformed disk UUID ""`. The
// node is found by grepping its console for "Waiting for decryption key"
// (startDaemon waits for that line), with the reason on it.
func TestOperatorPushToRefusedDisk(t *testing.T) {
	dir := sharedDir(t)
	daemonBin := buildDaemon(t, dir)
	bin := buildDmctl(t, dir)
	secretPath, _ := newMasterSecret(t, bin, dir)
	for _, tc := range []struct {
		name, reason string
		disk         func(t *testing.T) string
	}{
		{"LUKS2 disk not ours", constants.LUKSTokenType + " token", func(t *testing.T) string { return makeCLILUKS2(t, randomKey(t)) }},
		{"foreign disk (ext4, no UUID)", "", func(t *testing.T) string { return makeExt4(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := tc.disk(t)
			before := readAll(t, disk)
			d := startDaemon(t, daemonBin, dir, nil, nil, daemonArgs(dir, disk)...)
			r := runDmctlBin(t, bin, "recover", "-e", d.addr, "--master-secret", secretPath,
				"--insecure-dev-attestation", "--timeout", "20s", "--json")
			d.stop(t)

			lines := daemonLines(d)
			i := firstIndex(lines, "Waiting for decryption key")
			reason := ""
			if i >= 0 {
				reason = fmt.Sprint(lines[i]["reason"])
			}
			var final progressJSON
			for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
				var p progressJSON
				if json.Unmarshal([]byte(l), &p) == nil && p.Event == "failed" {
					final = p
				}
			}
			got := fmt.Sprintf("console: waiting reason %q; dmctl exit %d after %v, outcome %s: %s",
				reason, r.exit, r.took.Round(time.Millisecond), final.Outcome, final.Error)
			survived := i >= 0 && reason != "" && strings.Contains(reason, tc.reason) &&
				r.exit == 1 && final.Outcome == "refused" &&
				strings.Contains(final.Error, "state disk refused: "+reason) &&
				!strings.Contains(r.stdout+r.stderr, "malformed") && r.took < 10*time.Second
			record(t, outcome{Case: "operator: push to a refused disk: " + tc.name,
				Expected: "FailedPrecondition state disk refused: <reason>; dmctl exit 1", Got: got, Survived: survived,
				DataLost: changedBytes(before, readAll(t, disk), 0)})
			if !survived {
				t.Errorf("%s\nstdout:\n%s\nstderr:\n%s\ndaemon:\n%s", got, r.stdout, r.stderr, d.stdout)
			}
		})
	}
}

// progressJSON is a line of `dmctl recover --json`.
type progressJSON struct {
	Endpoint string `json:"endpoint"`
	Event    string `json:"event"`
	Outcome  string `json:"outcome"`
	Detail   string `json:"detail"`
	Error    string `json:"error"`
	ExitCode *int   `json:"exitCode"`
}

// The log reads like the seed's: "Starting RecoveryServer" and "Starting
// RejoinClient" before "Waiting for decryption key", which is printed only
// once the listener is bound; and a node without a disk says the same line,
// with its reason, so the seed's grep finds it.
func TestOperatorLogOrder(t *testing.T) {
	dir := sharedDir(t)
	daemonBin := buildDaemon(t, dir)

	t.Run("existing disk", func(t *testing.T) {
		d0 := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
		dead, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		deadAddr := dead.Addr().String()
		dead.Close()
		d := startDaemon(t, daemonBin, dir, nil, nil, daemonArgs(dir, d0.path, "--join-endpoints="+deadAddr)...)
		// startDaemon returned on the waiting line: the listener must take a
		// connection now.
		conn, dialErr := net.DialTimeout("tcp", d.addr, time.Second)
		if dialErr == nil {
			conn.Close()
		}
		d.stop(t)
		lines := daemonLines(d)
		rs, rc, w := firstIndex(lines, "Starting RecoveryServer"), firstIndex(lines, "Starting RejoinClient"), firstIndex(lines, "Waiting for decryption key")
		got := fmt.Sprintf("Starting RecoveryServer #%d, Starting RejoinClient #%d, Waiting for decryption key #%d; dial at the waiting line: %v", rs, rc, w, dialErr)
		survived := rs >= 0 && rc >= 0 && w > rs && w > rc && dialErr == nil
		record(t, outcome{Case: "operator: log order like the seed (daemon binary)", Expected: "both Starting lines, then Waiting (listener bound)",
			Got: got, Survived: survived})
		if !survived {
			t.Errorf("%s\n%s", got, d.stdout)
		}
	})

	t.Run("no disk", func(t *testing.T) {
		d := startDaemon(t, daemonBin, dir, nil, nil, daemonArgs(dir, filepath.Join(dir, "absent.img"))...)
		d.stop(t)
		lines := daemonLines(d)
		w := firstIndex(lines, "Waiting for decryption key")
		got := "no waiting line"
		survived := false
		if w >= 0 {
			got = fmt.Sprintf("waitingFor %v, reason %v, after Starting RecoveryServer: %v", lines[w]["waitingFor"], lines[w]["reason"], w > firstIndex(lines, "Starting RecoveryServer"))
			survived = lines[w]["waitingFor"] == "disk" && lines[w]["reason"] == "no state disk" && w > firstIndex(lines, "Starting RecoveryServer")
		}
		record(t, outcome{Case: "operator: grep 'Waiting for decryption key' finds a node without a disk", Expected: "the line, waitingFor disk, with the reason",
			Got: got, Survived: survived})
		if !survived {
			t.Errorf("%s\n%s", got, d.stdout)
		}
	})
	_ = os.Remove(filepath.Join(dir, "absent.img"))
}

// A push whose stream is open but whose first message has not arrived when
// the rejoin wins still gets its answer: the server closes only connections
// with nothing in flight.
func TestOperatorSilentStreamAtTheDecisionIsAnswered(t *testing.T) {
	disk := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	dev, err := diskencryption.Open(disk.path)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	log, logs := newLog(t, constants.LoggerSetup)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := recoveryserver.New(recoveryserver.Config{DiskUUID: disk.uuid, Listener: lis,
		Credentials: atls.NewCredentials(atls.Config{Issuer: attestation.NewDevIssuer(log.Named("attestation"))}),
		Log:         log.Named(constants.LoggerRecoveryServer)})
	secret := randomKey(t)
	rejoin := &scriptedRejoin{ticket: unlock.Key{DiskKey: disk.key, MeasurementSecret: secret}, fire: make(chan struct{}), offered: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 4*hangGuard)
	defer cancel()
	raced := make(chan raceOutcome, 1)
	go func() {
		res, err := setup.Race(ctx, log, func(k unlock.Key) error { return dev.CheckKey(k.DiskKey) }, srv, rejoin)
		raced <- raceOutcome{res, err}
	}()
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(operatorCreds(t, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := recoverproto.NewAPIClient(conn).Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The stream is open on the node (its call was logged), nothing sent.
	for logs.count("Received recover call") == 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	close(rejoin.fire)
	<-rejoin.offered
	p := &pendingStream{conn: conn, stream: stream, cancel: func() {}}
	var pushErr error
	if err := stream.Send(secretMsg(secret, nil)); err == nil {
		if _, err := stream.Recv(); err != nil {
			pushErr = err
		} else {
			pushErr = p.finish(disk.key)
		}
	} else {
		_, pushErr = stream.Recv()
	}
	race := <-raced
	got := fmt.Sprintf("push %s (%s); race won by %s", code(pushErr), status.Convert(pushErr).Message(), race.res.Source)
	ok := code(pushErr) == "AlreadyExists" && race.res.Source == "RejoinClient"
	record(t, outcome{Case: "operator: silent push stream open when the rejoin wins", Expected: "AlreadyExists, not a reset",
		Got: got, Survived: ok})
	if !ok {
		t.Errorf("%s\n%s", got, logs)
	}
}
