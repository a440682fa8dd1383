package rejoinclient

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	join "github.com/diskmapper/disk-mapper/joinproto"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

const testUUID = "8a4e0e2c-7b61-4c55-a3e4-0c5a2d5e7f10"

// hangLimit only catches hangs; no test measures speed with it.
const hangLimit = 20 * time.Second

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// leakCheck registers goleak as the first cleanup, so it runs last: after
// the test servers have stopped, every goroutine Serve started must be gone.
func leakCheck(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// acceptKey is a check that accepts exactly want and calls everything else
// a wrong key, like the real race does with the LUKS keyslots. It keeps the
// slices it was handed so the test can verify they were zeroed.
type acceptKey struct {
	want   ticket
	mu     sync.Mutex
	seen   []unlock.Key
	copies []ticket
}

func (a *acceptKey) check(_ context.Context, k unlock.Key) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen = append(a.seen, k)
	a.copies = append(a.copies, ticket{bytes.Clone(k.DiskKey), bytes.Clone(k.MeasurementSecret), bytes.Clone(k.MeasurementSalt)})
	if bytes.Equal(k.DiskKey, a.want.diskKey) && bytes.Equal(k.MeasurementSecret, a.want.secret) {
		return nil
	}
	return unlock.ErrWrongKey
}

func (a *acceptKey) assertZeroed(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range a.seen {
		for _, b := range [][]byte{k.DiskKey, k.MeasurementSecret, k.MeasurementSalt} {
			if len(b) == 0 || !bytes.Equal(b, make([]byte, len(b))) {
				t.Errorf("ticket bytes not zeroed after check (len %d)", len(b))
			}
		}
	}
}

func newTestClient(endpoints EndpointSource, creds credentials.TransportCredentials, mod func(*Config)) (*Client, *logSink) {
	log, sink := newTestLogger()
	cfg := Config{
		DiskUUID:    testUUID,
		Endpoints:   endpoints,
		Credentials: creds,
		Log:         log,
		KeepOrder:   true,
		BackoffBase: 10 * time.Millisecond,
		BackoffCap:  20 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	return New(cfg), sink
}

func serve(t *testing.T, ctx context.Context, c *Client, check unlock.Check) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, hangLimit)
	defer cancel()
	return c.Serve(ctx, check)
}

func TestServeHealthyOverTLS(t *testing.T) {
	leakCheck(t)
	serverCreds, clientCreds := newTLSPair(t)
	key := newTicket(t)
	var gotUUID atomic.Value
	srv := startJoinServer(t, serverCreds, func(_ context.Context, _ int, req *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		gotUUID.Store(req.GetDiskUuid())
		return key.response(), nil
	})
	c, logs := newTestClient(StaticEndpoints{srv.addr}, clientCreds, nil)
	check := &acceptKey{want: key}

	if err := serve(t, t.Context(), c, check.check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if gotUUID.Load() != testUUID {
		t.Errorf("server got disk UUID %v, want %s", gotUUID.Load(), testUUID)
	}
	if len(check.copies) != 1 || !bytes.Equal(check.copies[0].salt, key.salt) {
		t.Errorf("check got %d tickets / wrong salt", len(check.copies))
	}
	check.assertZeroed(t)

	wantMsgs := []string{"Starting RejoinClient", "Received list with JoinService endpoints", "Requesting rejoin ticket", "Rejoin ticket accepted", "RejoinClient stopped"}
	var msgs []string
	for _, e := range logs.entries(t) {
		msgs = append(msgs, e["msg"].(string))
		if e["logger"] != "rejoinClient" || e["event"] == nil || e["event"] == "" {
			t.Errorf("log line without logger/event: %v", e)
		}
	}
	if !slices.Equal(msgs, wantMsgs) {
		t.Errorf("log messages = %q, want %q", msgs, wantMsgs)
	}
	if eps := logs.withMsg(t, "Received list with JoinService endpoints")[0]["endpoints"]; len(eps.([]any)) != 1 || eps.([]any)[0] != srv.addr {
		t.Errorf("endpoints field = %v", eps)
	}
	assertNoKeyInLogs(t, logs, key)
}

func assertNoKeyInLogs(t *testing.T, logs *logSink, keys ...ticket) {
	t.Helper()
	out := logs.String()
	for _, k := range keys {
		for _, b := range [][]byte{k.diskKey, k.secret, k.salt} {
			for _, enc := range testutil.KeyEncodings(b) {
				if strings.Contains(out, enc) {
					t.Fatalf("key material in logs")
				}
			}
		}
	}
}

// TestServeDeadEndpointsThenHealthy: hanging and refusing endpoints in front
// of the healthy one; the attempt timeout is far beyond the hang limit, so a
// key can only arrive if the attempts ran in parallel.
func TestServeDeadEndpointsThenHealthy(t *testing.T) {
	leakCheck(t)
	serverCreds, clientCreds := newTLSPair(t)
	key := newTicket(t)
	srv := startJoinServer(t, serverCreds, ticketHandler(key))
	eps := StaticEndpoints{neverAnswering(t), closedPort(t), neverAnswering(t), srv.addr}
	c, logs := newTestClient(eps, clientCreds, func(cfg *Config) { cfg.AttemptTimeout = time.Hour })
	check := &acceptKey{want: key}

	if err := serve(t, t.Context(), c, check.check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	check.assertZeroed(t)
	if n := len(logs.withMsg(t, "Requesting rejoin ticket")); n != len(eps) {
		t.Errorf("%d attempts, want %d (all in parallel)", n, len(eps))
	}
	failed := logs.withMsg(t, "Failed to rejoin on endpoint")
	if len(failed) != 1 || failed[0]["endpoint"] != eps[1] || failed[0]["errorClass"] != "refused" || failed[0]["level"] != "WARN" {
		t.Errorf("failure lines = %v, want one refused for %s", failed, eps[1])
	}
}

// TestServeFailureStartsNextAttempt: with a stagger of an hour only the
// happy-eyeballs rule (a failed attempt starts the next at once) can reach
// the healthy endpoint behind two closed ports.
func TestServeFailureStartsNextAttempt(t *testing.T) {
	leakCheck(t)
	key := newTicket(t)
	srv := startJoinServer(t, insecure.NewCredentials(), ticketHandler(key))
	eps := StaticEndpoints{closedPort(t), closedPort(t), srv.addr}
	c, _ := newTestClient(eps, insecure.NewCredentials(), func(cfg *Config) { cfg.Stagger = time.Hour })
	check := &acceptKey{want: key}
	if err := serve(t, t.Context(), c, check.check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestServeStaggerDelaysNextAttempt: a hanging endpoint does not fail, so
// with a long stagger the second endpoint is not tried before the context
// ends.
func TestServeStaggerDelaysNextAttempt(t *testing.T) {
	leakCheck(t)
	key := newTicket(t)
	srv := startJoinServer(t, insecure.NewCredentials(), ticketHandler(key))
	c, logs := newTestClient(StaticEndpoints{neverAnswering(t), srv.addr}, insecure.NewCredentials(), func(cfg *Config) { cfg.Stagger = time.Hour })
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if err := c.Serve(ctx, (&acceptKey{want: key}).check); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Serve = %v, want deadline exceeded", err)
	}
	if srv.calls.Load() != 0 || len(logs.withMsg(t, "Requesting rejoin ticket")) != 1 {
		t.Errorf("healthy endpoint was asked during the stagger (%d calls)", srv.calls.Load())
	}
}

func TestServeWrongKeyThenHealthy(t *testing.T) {
	leakCheck(t)
	serverCreds, clientCreds := newTLSPair(t)
	good, bad := newTicket(t), newTicket(t)
	wrong := startJoinServer(t, serverCreds, ticketHandler(bad))
	// The healthy server answers after the wrong one has, so the wrong key
	// reaches check first and the client must go on with the other attempt.
	healthy := startJoinServer(t, serverCreds, func(ctx context.Context, _ int, _ *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		select {
		case <-time.After(200 * time.Millisecond):
			return good.response(), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	c, logs := newTestClient(StaticEndpoints{wrong.addr, healthy.addr}, clientCreds, nil)
	check := &acceptKey{want: good}

	if err := serve(t, t.Context(), c, check.check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if len(check.copies) != 2 || !bytes.Equal(check.copies[0].diskKey, bad.diskKey) {
		t.Fatalf("check saw %d tickets, want the wrong one then the good one", len(check.copies))
	}
	check.assertZeroed(t)
	failed := logs.withMsg(t, "Failed to rejoin on endpoint")
	if len(failed) != 1 || failed[0]["errorClass"] != "wrong_key" || failed[0]["endpoint"] != wrong.addr {
		t.Errorf("failure lines = %v, want one wrong_key for %s", failed, wrong.addr)
	}
	if len(logs.withMsg(t, "Failed to rejoin on all endpoints")) != 0 {
		t.Error("round reported as failed although a key won")
	}
	assertNoKeyInLogs(t, logs, good, bad)
}

// TestServeRoundsRepeatWithRediscovery: every round asks the source again;
// a round with only failures logs the ERROR line and backs off; a later
// round with a new endpoint list succeeds.
func TestServeRoundsRepeatWithRediscovery(t *testing.T) {
	leakCheck(t)
	key, bad := newTicket(t), newTicket(t)
	creds := insecure.NewCredentials()
	wrong := startJoinServer(t, creds, ticketHandler(bad))
	denied := startJoinServer(t, creds, func(context.Context, int, *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		return nil, status.Error(codes.PermissionDenied, "measurements do not match")
	})
	healthy := startJoinServer(t, creds, ticketHandler(key))
	var rounds atomic.Int32
	source := sourceFunc(func(context.Context) ([]string, error) {
		switch rounds.Add(1) {
		case 1:
			return nil, errors.New("metadata API unreachable")
		case 2, 3:
			return []string{wrong.addr, denied.addr, closedPort(t)}, nil
		}
		return []string{denied.addr, healthy.addr}, nil
	})
	c, logs := newTestClient(source, creds, nil)

	if err := serve(t, t.Context(), c, (&acceptKey{want: key}).check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if got := rounds.Load(); got != 4 {
		t.Errorf("source asked %d times, want 4", got)
	}
	if n := len(logs.withMsg(t, "Failed to discover JoinService endpoints")); n != 1 {
		t.Errorf("%d discovery failures logged, want 1", n)
	}
	all := logs.withMsg(t, "Failed to rejoin on all endpoints")
	if len(all) != 2 || all[0]["level"] != "ERROR" {
		t.Errorf("all-failed lines = %v, want 2 at ERROR", all)
	}
	classes := map[string]int{}
	for _, e := range logs.withMsg(t, "Failed to rejoin on endpoint") {
		classes[e["errorClass"].(string)]++
		if e["error"] == nil || e["endpoint"] == nil {
			t.Errorf("failure line without error/endpoint: %v", e)
		}
	}
	if classes["wrong_key"] != 2 || classes["permission_denied"] < 2 || classes["refused"] != 2 {
		t.Errorf("error classes = %v", classes)
	}
}

// TestServeResourceExhaustedHonoursRetryInfo: the server sheds load once
// with a 400 ms retry hint; backoff alone would retry after ≤ 2 ms.
func TestServeResourceExhaustedHonoursRetryInfo(t *testing.T) {
	leakCheck(t)
	const hint = 400 * time.Millisecond
	key := newTicket(t)
	var mu sync.Mutex
	var calls []time.Time
	srv := startJoinServer(t, insecure.NewCredentials(), func(_ context.Context, n int, _ *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		mu.Lock()
		calls = append(calls, time.Now())
		mu.Unlock()
		if n == 1 {
			st, err := status.New(codes.ResourceExhausted, "join service busy").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(hint)})
			if err != nil {
				return nil, err
			}
			return nil, st.Err()
		}
		return key.response(), nil
	})
	c, logs := newTestClient(StaticEndpoints{srv.addr}, insecure.NewCredentials(), func(cfg *Config) {
		cfg.BackoffBase, cfg.BackoffCap = time.Millisecond, 2*time.Millisecond
	})

	if err := serve(t, t.Context(), c, (&acceptKey{want: key}).check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if len(calls) != 2 {
		t.Fatalf("%d calls, want 2", len(calls))
	}
	if gap := calls[1].Sub(calls[0]); gap < hint {
		t.Errorf("retried after %v, before the server's hint of %v", gap, hint)
	}
	failed := logs.withMsg(t, "Failed to rejoin on endpoint")
	if len(failed) != 1 || failed[0]["errorClass"] != "resource_exhausted" || failed[0]["retryAfter"] != hint.String() {
		t.Errorf("failure lines = %v", failed)
	}
}

// TestServeSlowServerTimesOut: the attempt deadline reaches the server
// (gRPC propagates it) and a too-slow server is logged as a timeout.
func TestServeSlowServerTimesOut(t *testing.T) {
	leakCheck(t)
	key := newTicket(t)
	serverSawDeadline := make(chan bool, 8)
	slow := startJoinServer(t, insecure.NewCredentials(), func(ctx context.Context, _ int, _ *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		_, ok := ctx.Deadline()
		serverSawDeadline <- ok
		select {
		case <-time.After(hangLimit):
			return key.response(), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	c, logs := newTestClient(StaticEndpoints{slow.addr}, insecure.NewCredentials(), func(cfg *Config) { cfg.AttemptTimeout = 100 * time.Millisecond })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		for len(logs.withMsg(t, "Failed to rejoin on all endpoints")) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	if err := serve(t, ctx, c, (&acceptKey{want: key}).check); !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve = %v, want canceled", err)
	}
	if !<-serverSawDeadline {
		t.Error("the server saw no deadline: the attempt deadline is not propagated")
	}
	failed := logs.withMsg(t, "Failed to rejoin on endpoint")
	if len(failed) == 0 || failed[0]["errorClass"] != "timeout" {
		t.Errorf("failure lines = %v, want timeout", failed)
	}
}

// TestServeCancelMidRPC: cancelling the parent context cancels the RPC on
// the server too, and Serve returns the context's error with nothing left
// running (goleak).
func TestServeCancelMidRPC(t *testing.T) {
	leakCheck(t)
	serverCreds, clientCreds := newTLSPair(t)
	inRPC, serverCancelled := make(chan struct{}), make(chan struct{})
	srv := startJoinServer(t, serverCreds, func(ctx context.Context, _ int, _ *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		close(inRPC)
		<-ctx.Done()
		close(serverCancelled)
		return nil, ctx.Err()
	})
	c, logs := newTestClient(StaticEndpoints{srv.addr, neverAnswering(t)}, clientCreds, func(cfg *Config) { cfg.AttemptTimeout = time.Hour })
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-inRPC; cancel() }()

	if err := serve(t, ctx, c, (&acceptKey{}).check); !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve = %v, want canceled", err)
	}
	select {
	case <-serverCancelled:
	case <-time.After(hangLimit):
		t.Fatal("the server's RPC was never cancelled")
	}
	stopped := logs.withMsg(t, "RejoinClient stopped")
	if len(stopped) != 1 || len(logs.withMsg(t, "Failed to rejoin on endpoint")) != 0 {
		t.Errorf("want one stop line and no failure lines for cancelled attempts: %s", logs)
	}
}

func TestServeStopsWhenDecided(t *testing.T) {
	leakCheck(t)
	key := newTicket(t)
	srv := startJoinServer(t, insecure.NewCredentials(), ticketHandler(key))
	c, _ := newTestClient(StaticEndpoints{srv.addr}, insecure.NewCredentials(), nil)
	var handed []byte
	err := serve(t, t.Context(), c, func(_ context.Context, k unlock.Key) error {
		handed = k.DiskKey
		return unlock.ErrDecided
	})
	if !errors.Is(err, unlock.ErrDecided) {
		t.Fatalf("Serve = %v, want ErrDecided", err)
	}
	if srv.calls.Load() != 1 || !bytes.Equal(handed, make([]byte, 32)) {
		t.Errorf("calls = %d, ticket zeroed = %v", srv.calls.Load(), bytes.Equal(handed, make([]byte, 32)))
	}
}

func TestServeMalformedTicket(t *testing.T) {
	leakCheck(t)
	key := newTicket(t)
	empty := startJoinServer(t, insecure.NewCredentials(), func(context.Context, int, *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		return &join.IssueRejoinTicketResponse{MeasurementSecret: []byte("x")}, nil
	})
	healthy := startJoinServer(t, insecure.NewCredentials(), ticketHandler(key))
	// The healthy endpoint is tried only in the second round.
	var round atomic.Int32
	source := sourceFunc(func(context.Context) ([]string, error) {
		if round.Add(1) == 1 {
			return []string{empty.addr}, nil
		}
		return []string{healthy.addr}, nil
	})
	c, logs := newTestClient(source, insecure.NewCredentials(), nil)
	check := &acceptKey{want: key}
	if err := serve(t, t.Context(), c, check.check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if len(check.copies) != 1 {
		t.Errorf("check got %d tickets, want only the well-formed one", len(check.copies))
	}
	failed := logs.withMsg(t, "Failed to rejoin on endpoint")
	if len(failed) != 1 || failed[0]["errorClass"] != "malformed" {
		t.Errorf("failure lines = %v", failed)
	}
}

func TestServeTLSHandshakeFailure(t *testing.T) {
	leakCheck(t)
	serverCreds, _ := newTLSPair(t)
	_, otherClientCreds := newTLSPair(t) // trusts another CA
	srv := startJoinServer(t, serverCreds, ticketHandler(newTicket(t)))
	c, logs := newTestClient(StaticEndpoints{srv.addr}, otherClientCreds, nil)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		for len(logs.withMsg(t, "Failed to rejoin on all endpoints")) == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	if err := serve(t, ctx, c, (&acceptKey{}).check); !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve = %v", err)
	}
	if failed := logs.withMsg(t, "Failed to rejoin on endpoint"); len(failed) == 0 || failed[0]["errorClass"] != "tls_handshake" {
		t.Errorf("failure lines = %v, want tls_handshake", failed)
	}
	if srv.calls.Load() != 0 {
		t.Error("an untrusted server received the request")
	}
}

func TestServeRejectsIncompleteConfig(t *testing.T) {
	for name, mod := range map[string]func(*Config){
		"no credentials": func(c *Config) { c.Credentials = nil },
		"no endpoints":   func(c *Config) { c.Endpoints = nil },
		"no disk UUID":   func(c *Config) { c.DiskUUID = "" },
	} {
		t.Run(name, func(t *testing.T) {
			c, _ := newTestClient(StaticEndpoints{"127.0.0.1:1"}, insecure.NewCredentials(), mod)
			if err := c.Serve(t.Context(), (&acceptKey{}).check); err == nil {
				t.Error("Serve accepted an incomplete config")
			}
		})
	}
}
