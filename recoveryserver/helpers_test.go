package recoveryserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/recoverproto"
)

// The real unlock.Check is the race in setup/ over libcryptsetup on a LUKS2
// header file; its tests cover that a wrong key is refused and the right one
// wins. Here keyChecker stands in for it: this package's behaviour depends
// only on the check's result, so the fake compares bytes. Everything else
// (gRPC, TCP, TLS, limits) is real.
type keyChecker struct {
	right []byte
	hang  []byte // a key whose check blocks until its context ends
	delay time.Duration

	mu          sync.Mutex
	calls       int
	inFlight    int
	maxInFlight int
	accepted    bool
	seen        []unlock.Key // the slices as handed over, to verify zeroing
}

func (c *keyChecker) check(ctx context.Context, key unlock.Key) error {
	c.mu.Lock()
	c.calls++
	c.inFlight++
	c.maxInFlight = max(c.maxInFlight, c.inFlight)
	c.seen = append(c.seen, key)
	accepted := c.accepted
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
	}()

	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	switch {
	case c.hang != nil && bytes.Equal(key.DiskKey, c.hang):
		<-ctx.Done()
		return fmt.Errorf("checking key: %w", ctx.Err())
	case accepted:
		return unlock.ErrDecided
	case !bytes.Equal(key.DiskKey, c.right):
		return fmt.Errorf("keyslot check: %w", unlock.ErrWrongKey)
	}
	c.mu.Lock()
	c.accepted = true
	c.mu.Unlock()
	return nil
}

func (c *keyChecker) stats() (calls, maxInFlight int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls, c.maxInFlight
}

// secrets are one test's key material.
type secrets struct {
	diskKey, wrongKey, secret, salt []byte
}

func newSecrets(t testing.TB) secrets {
	t.Helper()
	return secrets{diskKey: testutil.RandomBytes(t, 32), wrongKey: testutil.RandomBytes(t, 32),
		secret: testutil.RandomBytes(t, 32), salt: testutil.RandomBytes(t, 32)}
}

// clone copies b: the server zeroes what it received, and the client's
// message buffers must not be the test's only copy.
func clone(b []byte) []byte { return append([]byte(nil), b...) }

const testUUID = "c9a8f6a0-9d0b-4a1d-8e5c-2b0f5d6e7a11"

// harness is one running server.
type harness struct {
	addr     string
	checker  *keyChecker
	logs     *testutil.LogBuffer
	cancel   context.CancelFunc
	serveErr chan error
	listener net.Listener
}

type option func(*Config)

func withCredentials(c credentials.TransportCredentials) option {
	return func(cfg *Config) { cfg.Credentials = c }
}

func startServer(t *testing.T, checker *keyChecker, opts ...option) *harness {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &testutil.LogBuffer{}
	cfg := Config{
		DiskUUID:    testUUID,
		Listener:    lis,
		Credentials: insecure.NewCredentials(),
		Log:         logging.New(logs, zapcore.DebugLevel).Named(constants.LoggerRecoveryServer),
	}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{addr: lis.Addr().String(), checker: checker, logs: logs, cancel: cancel,
		serveErr: make(chan error, 1), listener: lis}
	srv := New(cfg)
	go func() { h.serveErr <- srv.Serve(ctx, checker.check) }()
	t.Cleanup(func() {
		cancel()
		h.waitServe(t)
	})
	return h
}

// verifyNoLeaks checks, after every other cleanup of the test (clients
// closed, server stopped), that no goroutine is left.
func verifyNoLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// waitServe returns Serve's result; hangGuard only keeps a broken build from
// hanging the test run, it is no performance threshold.
func (h *harness) waitServe(t *testing.T) error {
	t.Helper()
	const hangGuard = 10 * time.Second
	select {
	case err := <-h.serveErr:
		h.serveErr <- err // later calls see it too
		return err
	case <-time.After(hangGuard):
		t.Fatalf("Serve did not return within %v", hangGuard)
		return nil
	}
}

func (h *harness) stillServing(t *testing.T) {
	t.Helper()
	select {
	case err := <-h.serveErr:
		t.Fatalf("Serve returned %v, want it still serving", err)
	default:
	}
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc := dialBench(t, addr, creds)
	t.Cleanup(func() { cc.Close() })
	return cc
}

// dialBench is dial without cleanup registration; the caller closes.
func dialBench(tb testing.TB, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	tb.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		tb.Fatal(err)
	}
	return cc
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// push runs the whole client side of the protocol, like dmctl recover. It
// returns the disk UUID the server sent and the call's final status.
func push(ctx context.Context, cc *grpc.ClientConn, secret, salt, key []byte, opts ...grpc.CallOption) (string, error) {
	stream, err := recoverproto.NewAPIClient(cc).Recover(ctx, opts...)
	if err != nil {
		return "", err
	}
	if err := stream.Send(&recoverproto.RecoverMessage{
		Request:         &recoverproto.RecoverMessage_MeasurementSecret{MeasurementSecret: clone(secret)},
		MeasurementSalt: clone(salt),
	}); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	resp, err := stream.Recv()
	if err != nil {
		return "", err
	}
	if err := stream.Send(&recoverproto.RecoverMessage{
		Request: &recoverproto.RecoverMessage_StateDiskKey{StateDiskKey: clone(key)},
	}); err != nil && !errors.Is(err, io.EOF) {
		return resp.GetDiskUuid(), err
	}
	if err := stream.CloseSend(); err != nil {
		return resp.GetDiskUuid(), err
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		return resp.GetDiskUuid(), err
	}
	return resp.GetDiskUuid(), nil
}

// sendRaw sends msgs, closes the sending side and returns the call's status.
func sendRaw(ctx context.Context, cc *grpc.ClientConn, msgs ...*recoverproto.RecoverMessage) error {
	stream, err := recoverproto.NewAPIClient(cc).Recover(ctx)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			break // the server already ended the stream; Recv has its status
		}
	}
	stream.CloseSend()
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// stallAfterSecret opens a stream, sends measurement_secret, reads the UUID
// and then sends nothing. It returns the stream so the test can read its end.
func stallAfterSecret(t *testing.T, ctx context.Context, cc *grpc.ClientConn, secret []byte) recoverproto.API_RecoverClient {
	t.Helper()
	stream, err := recoverproto.NewAPIClient(cc).Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&recoverproto.RecoverMessage{
		Request: &recoverproto.RecoverMessage_MeasurementSecret{MeasurementSecret: clone(secret)},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("stalling client: receiving the UUID: %v", err)
	}
	return stream
}

// findLine returns the first log line whose msg is msg.
func findLine(lines []map[string]any, msg string) (map[string]any, bool) {
	for _, l := range lines {
		if l["msg"] == msg {
			return l, true
		}
	}
	return nil, false
}

// selfSignedTLS returns server and client credentials for 127.0.0.1.
func selfSignedTLS(t testing.TB) (server, client credentials.TransportCredentials) {
	t.Helper()
	return testutil.SelfSignedTLS(t, "recoveryserver test")
}

// serverGoroutines lists live goroutines that belong to a gRPC server or to
// this package's non-test code. It lets a test check "nothing outlives Serve"
// while its own clients are still connected (goleak cannot tell them apart).
func serverGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	markers := []string{
		"recoveryserver.(*Server)", "recoveryserver.(*recoverService)", "recoveryserver.(*trackedListener)",
		"grpc.(*Server)", "transport.(*http2Server)", "created by google.golang.org/grpc/internal/transport.NewServerTransport",
	}
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, m := range markers {
			if strings.Contains(g, m) {
				found = append(found, g)
				break
			}
		}
	}
	return found
}

// assertNoServerGoroutines allows a moment for goroutines that have been
// told to exit (gRPC's transport writers finish after Stop returns).
func assertNoServerGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		left := serverGoroutines()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d server goroutine(s) outlived Serve:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
