package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spf13/afero"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/recoverproto"
	"github.com/diskmapper/disk-mapper/recoveryserver"
	"github.com/diskmapper/disk-mapper/setup"
)

// hangGuard only keeps a broken build from hanging the suite; it is no
// performance threshold.
const hangGuard = 15 * time.Second

// fileMounter is the Mounter of a node whose disk is a file: the host has no
// device-mapper, so an unlock stops at Activate and nothing is ever mounted.
// It records calls so a case can prove that.
type fileMounter struct{ calls []string }

func (m *fileMounter) MakeFilesystem(dev string) error {
	m.calls = append(m.calls, "mkfs "+dev)
	return errors.New("no file system on the host")
}
func (m *fileMounter) Mount(dev, target string, _ bool) error {
	m.calls = append(m.calls, "mount "+dev)
	return errors.New("no mount on the host")
}
func (m *fileMounter) Unmount(string) error { return nil }

// memMarker stands in for PCR 15 (no TPM on the host for setup; the real
// marker is covered by internal/attestation's swtpm tests).
type memMarker struct{ marked int }

func (m *memMarker) MarkNodeAsBootstrapped([]byte) error { m.marked++; return nil }
func (m *memMarker) IsBootstrapped() (bool, error)       { return m.marked > 0, nil }

// started is one call of the node's SourceFactory: the RecoveryServer it
// bound and what for.
type started struct {
	addr string
	uuid string
	mode setup.DiskMode
}

// node is a real setup.Manager with setup.LUKSBackend() on a disk file and a
// real RecoveryServer over aTLS (dev issuer) as its only key source.
type node struct {
	logs    *logSink
	started chan started
	done    chan error
	cancel  context.CancelFunc
	mounter *fileMounter
}

func startNode(t *testing.T, disk string) *node {
	t.Helper()
	log, logs := newLog(t, constants.LoggerSetup)
	n := &node{logs: logs, started: make(chan started, 4), done: make(chan error, 1), mounter: &fileMounter{}}
	issuer := attestation.NewDevIssuer(log.Named("attestation"))
	sources := func(uuid string, mode setup.DiskMode) ([]setup.KeySource, error) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		srv := recoveryserver.New(recoveryserver.Config{
			DiskUUID:    uuid,
			Listener:    lis,
			Credentials: atls.NewCredentials(atls.Config{Issuer: issuer, Log: log.Named("atls")}),
			Log:         log.Named(constants.LoggerRecoveryServer),
		})
		n.started <- started{addr: lis.Addr().String(), uuid: uuid, mode: mode}
		return []setup.KeySource{srv}, nil
	}
	dir := t.TempDir()
	cfg := setup.Config{
		StateDisk:        disk,
		MappingName:      "disk-mapper-faults-test",
		MappedDevice:     dir + "/mapped",
		MountPoint:       dir + "/mnt",
		NodeStateFile:    "node_state.json",
		ReminderInterval: 200 * time.Millisecond,
	}
	mgr := setup.New(cfg, log, setup.LUKSBackend(), n.mounter, afero.NewMemMapFs(), &memMarker{}, sources)
	ctx, cancel := context.WithTimeout(context.Background(), 4*hangGuard)
	n.cancel = cancel
	go func() { _, err := mgr.Run(ctx); n.done <- err }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(hangGuard):
			t.Error("setup.Manager did not return after cancel")
		}
	})
	return n
}

func (n *node) waitStarted(t *testing.T) started {
	t.Helper()
	select {
	case s := <-n.started:
		return s
	case err := <-n.done:
		n.done <- err
		t.Fatalf("Manager returned before starting a key source: %v\nlogs:\n%s", err, n.logs)
	case <-time.After(hangGuard):
		t.Fatalf("no key source started\nlogs:\n%s", n.logs)
	}
	return started{}
}

// stop cancels the Manager and returns Run's error.
func (n *node) stop(t *testing.T) error {
	t.Helper()
	n.cancel()
	return n.wait(t)
}

func (n *node) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-n.done:
		n.done <- err
		return err
	case <-time.After(hangGuard):
		t.Fatalf("Manager did not return\nlogs:\n%s", n.logs)
	}
	return nil
}

// field returns the value of key in the first log line with message msg.
func field(logs *logSink, msg, key string) string {
	for _, line := range strings.Split(logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != msg {
			continue
		}
		return fmt.Sprint(m[key])
	}
	return ""
}

// operatorCreds are what `dmctl recover` uses: aTLS validating the node.
func operatorCreds(t testing.TB, v attestation.Validator) credentials.TransportCredentials {
	log, _ := newLog(t, "operator")
	if v == nil {
		v = attestation.NewDevValidator(log)
	}
	return atls.NewCredentials(atls.Config{Validator: v, Log: log})
}

// push runs one Recover stream with the given messages (nil ends the
// stream after the previous one) and returns the disk UUID the node named
// and the stream's final status.
func push(ctx context.Context, addr string, creds credentials.TransportCredentials, msgs ...*recoverproto.RecoverMessage) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	stream, err := recoverproto.NewAPIClient(conn).Recover(ctx)
	if err != nil {
		return "", err
	}
	uuid := ""
	for i, m := range msgs {
		if err := stream.Send(m); err != nil {
			break // the status comes with Recv
		}
		if i == 0 && len(msgs) > 1 {
			resp, err := stream.Recv()
			if err != nil {
				return "", err
			}
			uuid = resp.GetDiskUuid()
		}
	}
	_ = stream.CloseSend()
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return uuid, nil
			}
			return uuid, err
		}
	}
}

func secretMsg(secret, salt []byte) *recoverproto.RecoverMessage {
	return &recoverproto.RecoverMessage{
		Request:         &recoverproto.RecoverMessage_MeasurementSecret{MeasurementSecret: clone(secret)},
		MeasurementSalt: clone(salt),
	}
}

func keyMsg(key []byte) *recoverproto.RecoverMessage {
	return &recoverproto.RecoverMessage{Request: &recoverproto.RecoverMessage_StateDiskKey{StateDiskKey: clone(key)}}
}

// pushKey is the honest operator's push.
func pushKey(addr string, creds credentials.TransportCredentials, secret, salt, key []byte) (string, error) {
	return push(context.Background(), addr, creds, secretMsg(secret, salt), keyMsg(key))
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func code(err error) string { return status.Code(err).String() }
