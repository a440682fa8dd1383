package rejoinclient

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	join "github.com/diskmapper/disk-mapper/joinproto"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// pushedBack is RESOURCE_EXHAUSTED with a RetryInfo hint, as the JoinService sends it.
func pushedBack(hint time.Duration) error {
	st, err := status.New(codes.ResourceExhausted, "join service busy").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(hint)})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// callTimes records when a handler was called.
type callTimes struct {
	mu    sync.Mutex
	times []time.Time
}

func (c *callTimes) add() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.times = append(c.times, time.Now())
}

func (c *callTimes) get() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.times...)
}

// slowBackoff makes every backoff pause 9.9 s, far longer than the hints
// below, so a test can tell which of the two a retry waited for.
func slowBackoff(cfg *Config) {
	cfg.BackoffBase, cfg.BackoffCap = 10*time.Second, 10*time.Second
	cfg.Rand = func() float64 { return 0.99 }
}

// TestServeAllPushedBackWaitsOnlyForTheHint: when every endpoint of a round
// answered RESOURCE_EXHAUSTED with a retry hint, the next round starts at
// the earliest hint, with no backoff on top: the service reserved that time.
func TestServeAllPushedBackWaitsOnlyForTheHint(t *testing.T) {
	leakCheck(t)
	const hintA, hintB = 40 * time.Millisecond, 120 * time.Millisecond
	key := newTicket(t)
	var callsA, callsB callTimes
	a := startJoinServer(t, insecure.NewCredentials(), func(_ context.Context, n int, _ *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		callsA.add()
		if n == 1 {
			return nil, pushedBack(hintA)
		}
		return key.response(), nil
	})
	b := startJoinServer(t, insecure.NewCredentials(), func(context.Context, int, *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		callsB.add()
		return nil, pushedBack(hintB)
	})
	c, _ := newTestClient(StaticEndpoints{a.addr, b.addr}, insecure.NewCredentials(), slowBackoff)

	start := time.Now()
	if err := serve(t, t.Context(), c, (&acceptKey{want: key}).check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	elapsed := time.Since(start)
	ta := callsA.get()
	if len(ta) != 2 {
		t.Fatalf("endpoint A called %d times, want 2", len(ta))
	}
	gap := ta[1].Sub(ta[0])
	if gap < hintA {
		t.Errorf("A retried after %v, before its hint of %v", gap, hintA)
	}
	// The backoff would have added 9.9 s; the earliest hint is 40 ms. The
	// bound sits halfway, so a loaded machine cannot fail the test.
	if gap > hintA+5*time.Second || elapsed > 5*time.Second {
		t.Errorf("A retried after %v (Serve took %v): a backoff was added to the %v hint", gap, elapsed, hintA)
	}
	if n := len(callsB.get()); n != 1 {
		t.Errorf("endpoint B (hint %v) called %d times; the key came from A before B's hint", hintB, n)
	}
}

// TestServeBackoffStillAppliesWhenAnEndpointFailedWithoutHint: a round in
// which some endpoint failed for another reason (here: connection refused)
// is a failed round; its backoff applies even though another endpoint sent
// a short hint.
func TestServeBackoffStillAppliesWhenAnEndpointFailedWithoutHint(t *testing.T) {
	leakCheck(t)
	const hint = 20 * time.Millisecond
	key := newTicket(t)
	var calls callTimes
	srv := startJoinServer(t, insecure.NewCredentials(), func(_ context.Context, n int, _ *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		calls.add()
		if n == 1 {
			return nil, pushedBack(hint)
		}
		return key.response(), nil
	})
	c, _ := newTestClient(StaticEndpoints{srv.addr, closedPort(t)}, insecure.NewCredentials(), func(cfg *Config) {
		cfg.BackoffBase, cfg.BackoffCap = 300*time.Millisecond, 300*time.Millisecond
		cfg.Rand = func() float64 { return 0.99 } // also the shuffle: KeepOrder is set
	})
	if err := serve(t, t.Context(), c, (&acceptKey{want: key}).check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	times := calls.get()
	if len(times) != 2 {
		t.Fatalf("%d calls, want 2", len(times))
	}
	if gap := times[1].Sub(times[0]); gap < 250*time.Millisecond {
		t.Errorf("retried after %v: the failed round's backoff (≈297 ms) was skipped", gap)
	}
}

// countingListener counts the connections a server accepted.
type countingListener struct {
	net.Listener
	accepted atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// startCountingJoinServer is startJoinServer with a connection count.
func startCountingJoinServer(t *testing.T, h handler) (addr string, lis *countingListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis = &countingListener{Listener: ln}
	s := &joinServer{addr: ln.Addr().String(), handle: h}
	srv := grpc.NewServer(grpc.Creds(insecure.NewCredentials()))
	join.RegisterAPIServer(srv, s)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return s.addr, lis
}

// TestServeReusesConnectionAcrossShortHints: a pushed-back attempt keeps its
// connection (no new handshake, which with aTLS means a TPM quote and its
// validation) for the endpoint's next try; any other failure closes it.
func TestServeReusesConnectionAcrossShortHints(t *testing.T) {
	leakCheck(t)
	key := newTicket(t)
	addr, lis := startCountingJoinServer(t, func(_ context.Context, n int, _ *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		switch n {
		case 1:
			return nil, status.Error(codes.Unavailable, "restarting") // no hint: connection dropped
		case 2, 3:
			return nil, pushedBack(10 * time.Millisecond) // connection kept
		}
		return key.response(), nil
	})
	c, _ := newTestClient(StaticEndpoints{addr}, insecure.NewCredentials(), nil)
	if err := serve(t, t.Context(), c, (&acceptKey{want: key}).check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if got := lis.accepted.Load(); got != 2 {
		t.Errorf("%d connections for 4 calls, want 2 (a new one after the failure without hint, then reuse across the hints)", got)
	}
	if len(c.conns) != 0 {
		t.Errorf("%d connections still kept after Serve returned", len(c.conns))
	}
}

// TestServeDropsKeptConnectionOfUndiscoveredEndpoint: re-discovery each round
// still decides where to go; a connection kept for an endpoint that is no
// longer listed is closed, not carried along.
func TestServeDropsKeptConnectionOfUndiscoveredEndpoint(t *testing.T) {
	leakCheck(t)
	key := newTicket(t)
	oldAddr, _ := startCountingJoinServer(t, func(context.Context, int, *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		return nil, pushedBack(10 * time.Millisecond)
	})
	newAddr, _ := startCountingJoinServer(t, func(_ context.Context, n int, _ *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
		if n == 1 {
			return nil, pushedBack(10 * time.Millisecond)
		}
		return key.response(), nil
	})
	var c *Client
	rounds := 0
	keptOld := make([]bool, 0, 3)
	// The source runs on Serve's goroutine, like every access to c.conns.
	source := sourceFunc(func(context.Context) ([]string, error) {
		rounds++
		_, kept := c.conns[oldAddr]
		keptOld = append(keptOld, kept)
		if rounds == 1 {
			return []string{oldAddr}, nil
		}
		return []string{newAddr}, nil
	})
	c, _ = newTestClient(source, insecure.NewCredentials(), nil)
	if err := serve(t, t.Context(), c, (&acceptKey{want: key}).check); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// Round 1 asks old (pushed back, connection kept); round 2 lists only
	// new (old's connection must go); round 3 gets the key from new.
	if want := []bool{false, true, false}; len(keptOld) != 3 || keptOld[1] != want[1] || keptOld[2] != want[2] {
		t.Errorf("old endpoint's connection kept at discovery of rounds 1..3: %v, want %v", keptOld, want)
	}
}
