package recoveryserver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
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
	return secrets{diskKey: random(t, 32), wrongKey: random(t, 32), secret: random(t, 32), salt: random(t, 32)}
}

func random(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// clone copies b: the server zeroes what it received, and the client's
// message buffers must not be the test's only copy.
func clone(b []byte) []byte { return append([]byte(nil), b...) }

const testUUID = "c9a8f6a0-9d0b-4a1d-8e5c-2b0f5d6e7a11"

// syncBuffer is a log sink the server writes to from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Sync() error { return nil }

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness is one running server.
type harness struct {
	addr     string
	checker  *keyChecker
	logs     *syncBuffer
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
	logs := &syncBuffer{}
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

// logLine is one parsed JSON log line.
type logLine map[string]any

func parseLogs(t *testing.T, raw string) []logLine {
	t.Helper()
	var lines []logLine
	for _, l := range strings.Split(strings.TrimSpace(raw), "\n") {
		if l == "" {
			continue
		}
		var line logLine
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", l, err)
		}
		lines = append(lines, line)
	}
	return lines
}

func findLine(lines []logLine, msg string) (logLine, bool) {
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
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "recoveryserver test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: cert}},
		MinVersion:   tls.VersionTLS13,
	})
	client = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13})
	return server, client
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
