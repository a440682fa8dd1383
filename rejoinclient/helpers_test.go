package rejoinclient

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	join "github.com/diskmapper/disk-mapper/joinproto"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// newTLSPair returns server and client credentials around a fresh
// self-signed certificate for 127.0.0.1, so that tests and benchmarks run
// the real TLS handshake.
func newTLSPair(tb testing.TB) (server, client credentials.TransportCredentials) {
	tb.Helper()
	return testutil.SelfSignedTLS(tb, "joinservice-test")
}

// handler is a test JoinService's behaviour for one call (n counts from 1).
type handler func(ctx context.Context, n int, req *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error)

// joinServer is a tiny join.API server on 127.0.0.1.
type joinServer struct {
	join.UnimplementedAPIServer
	addr   string
	handle handler
	calls  atomic.Int32
}

func (s *joinServer) IssueRejoinTicket(ctx context.Context, req *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
	return s.handle(ctx, int(s.calls.Add(1)), req)
}

// startJoinServer serves h on a fresh loopback port until the test ends.
func startJoinServer(tb testing.TB, creds credentials.TransportCredentials, h handler) *joinServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &joinServer{addr: ln.Addr().String(), handle: h}
	srv := grpc.NewServer(grpc.Creds(creds))
	join.RegisterAPIServer(srv, s)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	tb.Cleanup(func() { srv.Stop(); <-done })
	return s
}

// ticketHandler always issues key.
func ticketHandler(key ticket) handler {
	return func(context.Context, int, *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		return key.response(), nil
	}
}

// ticket is a test rejoin ticket; response hands out fresh copies, because
// the client zeroes what it received.
type ticket struct{ diskKey, secret, salt []byte }

func newTicket(tb testing.TB) ticket {
	tb.Helper()
	return ticket{testutil.RandomBytes(tb, 32), testutil.RandomBytes(tb, 32), testutil.RandomBytes(tb, 32)}
}

func (t ticket) response() *join.IssueRejoinTicketResponse {
	return &join.IssueRejoinTicketResponse{
		StateDiskKey:      bytes.Clone(t.diskKey),
		MeasurementSecret: bytes.Clone(t.secret),
		MeasurementSalt:   bytes.Clone(t.salt),
	}
}

// neverAnswering is a dead endpoint that accepts TCP connections and never
// says a word (no TLS, no HTTP/2): the attempt can only time out.
func neverAnswering(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		closed bool
		conns  []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				c.Close()
				mu.Unlock()
				return
			}
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(io.Discard, c); c.Close() })
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// closedPort is a dead endpoint whose connections are refused.
func closedPort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// logSink collects the JSON log lines of the real logging contract.
type logSink struct{ testutil.LogBuffer }

// entries parses every line; a line that is not JSON fails the test.
func (s *logSink) entries(tb testing.TB) []map[string]any {
	tb.Helper()
	return testutil.ParseLogLines(tb, s.String())
}

// withMsg returns the entries whose msg is msg.
func (s *logSink) withMsg(tb testing.TB, msg string) []map[string]any {
	tb.Helper()
	var out []map[string]any
	for _, e := range s.entries(tb) {
		if e["msg"] == msg {
			out = append(out, e)
		}
	}
	return out
}

func newTestLogger() (*zap.Logger, *logSink) {
	sink := &logSink{}
	return logging.New(sink, zapcore.DebugLevel).Named(constants.LoggerRejoinClient), sink
}

// sourceFunc adapts a function to EndpointSource.
type sourceFunc func(ctx context.Context) ([]string, error)

func (f sourceFunc) Endpoints(ctx context.Context) ([]string, error) { return f(ctx) }
