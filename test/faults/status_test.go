package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/recoverproto"
	"github.com/diskmapper/disk-mapper/recoveryserver"
	"github.com/diskmapper/disk-mapper/setup"
)

// statusJSON is a line of `dmctl status --json`.
type statusJSON struct {
	Endpoint       string `json:"endpoint"`
	State          string `json:"state"`
	DiskUUID       string `json:"diskUUID"`
	Reason         string `json:"reason"`
	WaitingSince   string `json:"waitingSince"`
	RejoinRunning  bool   `json:"rejoinRunning"`
	RejoinAttempts int    `json:"rejoinAttempts"`
	NextRejoinInMs *int64 `json:"nextRejoinInMs"`
	JoinEndpoints  []struct {
		Endpoint       string `json:"endpoint"`
		Attempts       int    `json:"attempts"`
		LastErrorClass string `json:"lastErrorClass"`
	} `json:"joinEndpoints"`
	UnlockedBy string `json:"unlockedBy"`
	Outcome    string `json:"outcome"`
	Error      string `json:"error"`
}

func dmctlStatus(t *testing.T, bin, addr string) (statusJSON, dmctlRun) {
	t.Helper()
	r := runDmctlBin(t, bin, "status", "-e", addr, "--insecure-dev-attestation", "--json", "--timeout", "10s")
	var s statusJSON
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &s); err != nil {
		t.Logf("dmctl status output %q: %v (stderr %s)", r.stdout, err, r.stderr)
	}
	return s, r
}

// `dmctl status` against the real daemon binary in each waiting state:
// waiting for a key (with rejoin attempts, the error class per endpoint and
// the next retry), refused disk with its reason, waiting for a disk.
func TestOperatorStatusOfTheDaemon(t *testing.T) {
	dir := sharedDir(t)
	daemonBin := buildDaemon(t, dir)
	bin := buildDmctl(t, dir)

	t.Run("waiting for key", func(t *testing.T) {
		d0 := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
		dead, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		deadAddr := dead.Addr().String()
		dead.Close()
		d := startDaemon(t, daemonBin, dir, nil, nil, daemonArgs(dir, d0.path, "--join-endpoints="+deadAddr)...)
		defer d.stop(t)
		deadline := time.Now().Add(hangGuard)
		for d.stdout.count("Failed to rejoin on all endpoints") < 1 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		s, r := dmctlStatus(t, bin, d.addr)
		ok := r.exit == 0 && s.State == "waiting_for_key" && s.DiskUUID == d0.uuid && s.WaitingSince != "" &&
			s.RejoinRunning && s.RejoinAttempts >= 1 && len(s.JoinEndpoints) == 1 &&
			s.JoinEndpoints[0].Endpoint == deadAddr && s.JoinEndpoints[0].LastErrorClass != ""
		got := fmt.Sprintf("exit %d: %s", r.exit, strings.TrimSpace(r.stdout))
		record(t, outcome{Case: "operator: dmctl status, waiting for key (daemon binary)",
			Expected: "waiting_for_key, since, attempts, error class per endpoint", Got: got, Survived: ok})
		if !ok {
			t.Errorf("%s\nstderr %s\ndaemon:\n%s", got, r.stderr, d.stdout)
		}
		text := runDmctlBin(t, bin, "status", "-e", d.addr, "--insecure-dev-attestation", "--timeout", "10s")
		if !strings.Contains(text.stdout, "waiting for its decryption key since") || !strings.Contains(text.stdout, deadAddr+": ") {
			t.Errorf("text status:\n%s", text.stdout)
		}
	})

	t.Run("refused disk", func(t *testing.T) {
		disk := makeExt4(t)
		d := startDaemon(t, daemonBin, dir, nil, nil, daemonArgs(dir, disk)...)
		defer d.stop(t)
		s, r := dmctlStatus(t, bin, d.addr)
		ok := r.exit == 0 && s.State == "disk_refused" && strings.Contains(s.Reason, "ext") && !s.RejoinRunning
		got := fmt.Sprintf("exit %d: %s", r.exit, strings.TrimSpace(r.stdout))
		record(t, outcome{Case: "operator: dmctl status, refused disk (daemon binary)",
			Expected: "disk_refused with the reason", Got: got, Survived: ok})
		if !ok {
			t.Errorf("%s\nstderr %s", got, r.stderr)
		}
	})

	t.Run("no disk", func(t *testing.T) {
		d := startDaemon(t, daemonBin, dir, nil, nil, daemonArgs(dir, filepath.Join(t.TempDir(), "absent.img"))...)
		defer d.stop(t)
		s, r := dmctlStatus(t, bin, d.addr)
		ok := r.exit == 0 && s.State == "waiting_for_disk" && s.Reason == "no state disk"
		got := fmt.Sprintf("exit %d: %s", r.exit, strings.TrimSpace(r.stdout))
		record(t, outcome{Case: "operator: dmctl status, waiting for a disk (daemon binary)",
			Expected: "waiting_for_disk", Got: got, Survived: ok})
		if !ok {
			t.Errorf("%s\nstderr %s", got, r.stderr)
		}
	})
}

// Unlocked and shutting down: a connection that is still open when another
// source's key wins (here the operator's own push in flight) is answered
// UNLOCKED, naming the source, before the server closes.
func TestOperatorStatusUnlocked(t *testing.T) {
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
	p := openPending(t, lis.Addr().String(), secret)
	before, beforeErr := recoverproto.NewAPIClient(p.conn).Status(ctx, &recoverproto.StatusRequest{})
	close(rejoin.fire)
	<-rejoin.offered
	after, afterErr := recoverproto.NewAPIClient(p.conn).Status(ctx, &recoverproto.StatusRequest{})
	pushErr := p.finish(disk.key)
	race := <-raced

	got := fmt.Sprintf("before: %v %v; after the rejoin won: %v by %q %v; push %s; race won by %s",
		before.GetState(), beforeErr, after.GetState(), after.GetUnlockedBy(), afterErr, code(pushErr), race.res.Source)
	ok := beforeErr == nil && before.GetState() == recoverproto.StatusResponse_WAITING_FOR_KEY &&
		afterErr == nil && after.GetState() == recoverproto.StatusResponse_UNLOCKED && after.GetUnlockedBy() == "RejoinClient" &&
		code(pushErr) == "AlreadyExists" && race.res.Source == "RejoinClient"
	record(t, outcome{Case: "operator: status of a node unlocked by its JoinService, push in flight",
		Expected: "WAITING_FOR_KEY, then UNLOCKED by RejoinClient; push AlreadyExists", Got: got, Survived: ok})
	if !ok {
		t.Errorf("%s\n%s", got, logs)
	}
}
