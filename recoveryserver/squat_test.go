package recoveryserver

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/diskmapper/disk-mapper/recoverproto"
)

// Issue 9 item 3: idle streams must not lock the operator out. A squatter is
// a connection that holds an open Recover stream and sends nothing.

// squatHangGuard only keeps a broken build from hanging.
const squatHangGuard = 5 * time.Second

type squatter struct {
	cc    *grpc.ClientConn
	ended chan error // the stream's end (eviction, deadline), or its refusal
}

// dialFrom dials addr from the loopback address local ("" = any); Linux
// routes all of 127.0.0.0/8 to lo, so tests can play distinct hosts.
func dialFrom(t *testing.T, addr, local string) *grpc.ClientConn {
	t.Helper()
	d := &net.Dialer{}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// squat opens a squatter from local and returns once the server has seen
// its stream, or the stream was refused.
func squat(t *testing.T, h *harness, local string) *squatter {
	t.Helper()
	s := &squatter{cc: dialFrom(t, h.addr, local), ended: make(chan error, 1)}
	before := countEvent(h.logs, "recover_call_received")
	stream, err := recoverproto.NewAPIClient(s.cc).Recover(context.Background())
	if err != nil {
		s.ended <- err
		return s
	}
	go func() {
		_, err := stream.Recv()
		s.ended <- err
	}()
	for deadline := time.Now().Add(squatHangGuard); countEvent(h.logs, "recover_call_received") == before; {
		if !s.alive() || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return s
}

func (s *squatter) alive() bool {
	select {
	case err := <-s.ended:
		s.ended <- err
		return false
	default:
		return true
	}
}

func alive(squatters []*squatter) int {
	n := 0
	for _, s := range squatters {
		if s.alive() {
			n++
		}
	}
	return n
}

// The operator's single push succeeds while 16 or 64 squatters hold
// streams. The message timeout is a minute, so only eviction can let the
// operator in; "per-IP cap off" proves the eviction order alone, "defaults"
// that the per-IP cap (all squatters and the operator share 127.0.0.1 here)
// does not get in the operator's way.
func TestIdleSquattersDoNotLockOutOperator(t *testing.T) {
	for _, squatters := range []int{16, 64} {
		for _, perIP := range []struct {
			name string
			cap  int
		}{{"per-IP cap off", DefaultMaxConnections}, {"defaults", 0}} {
			t.Run(fmt.Sprintf("%d squatters/%s", squatters, perIP.name), func(t *testing.T) {
				verifyNoLeaks(t)
				s := newSecrets(t)
				h := startServer(t, &keyChecker{right: s.diskKey}, func(c *Config) {
					c.MessageTimeout, c.StreamTimeout = time.Minute, 2*time.Minute
					c.MaxConnectionsPerIP = perIP.cap
				})
				var all []*squatter
				for range squatters {
					all = append(all, squat(t, h, ""))
				}
				held := alive(all)
				t.Logf("%d of %d squatters hold a stream", held, squatters)
				if held == 0 {
					t.Fatal("no squatter holds a stream: the test proves nothing")
				}

				cc := dial(t, h.addr, nil)
				if _, err := push(testContext(t), cc, s.secret, nil, s.diskKey); err != nil {
					t.Fatalf("operator push with %d squatters holding streams: %v", held, err)
				}
				if err := h.waitServe(t); err != nil {
					t.Fatalf("Serve: %v", err)
				}
				cc.Close()
				if !strings.Contains(h.logs.String(), `"sentUsefulMessage":false`) {
					t.Error("no squatter was evicted")
				}
			})
		}
	}
}

// A stream that sends nothing ends after the message timeout, long before
// the stream timeout; so does one that sends its secret but never its key.
func TestStreamThatSendsNothingEndsAtMessageTimeout(t *testing.T) {
	verifyNoLeaks(t)
	const msgTimeout = 200 * time.Millisecond
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey}, func(c *Config) {
		c.MessageTimeout, c.StreamTimeout = msgTimeout, time.Minute
	})
	sq := squat(t, h, "")
	var err error
	select {
	case err = <-sq.ended:
	case <-time.After(squatHangGuard):
		t.Fatalf("a stream that sent nothing was still open after %v (message timeout %v)", squatHangGuard, msgTimeout)
	}
	wantCode(t, "silent stream", err, codes.DeadlineExceeded)
	if !strings.Contains(status.Convert(err).Message(), "no measurement_secret within") {
		t.Errorf("status %q does not say what was missing", status.Convert(err).Message())
	}

	ctx, cancel := context.WithTimeout(context.Background(), squatHangGuard)
	defer cancel()
	stalled := stallAfterSecret(t, ctx, dial(t, h.addr, nil), s.secret)
	_, err = stalled.Recv()
	wantCode(t, "stream stalled after its secret", err, codes.DeadlineExceeded)
	if !strings.Contains(status.Convert(err).Message(), "no state_disk_key within") {
		t.Errorf("status %q does not say what was missing", status.Convert(err).Message())
	}
	h.stillServing(t)
}

// One address cannot hold more than MaxConnectionsPerIP connections; its
// newcomers evict its own oldest, not other addresses' connections, and an
// operator from another address, or from the same one, still gets in.
func TestPerIPConnectionCap(t *testing.T) {
	verifyNoLeaks(t)
	const perIP = 4
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey}, func(c *Config) {
		c.MessageTimeout, c.StreamTimeout = time.Minute, 2*time.Minute
		c.MaxConnections, c.MaxConnectionsPerIP = 16, perIP
	})
	var noisy, other []*squatter
	for range 10 {
		noisy = append(noisy, squat(t, h, "127.0.0.2"))
	}
	for range 3 {
		other = append(other, squat(t, h, "127.0.0.3"))
	}
	if n := alive(noisy); n != perIP {
		t.Errorf("127.0.0.2 holds %d connections, want %d (its cap)", n, perIP)
	}
	for i, sq := range noisy[len(noisy)-perIP:] {
		if !sq.alive() {
			t.Errorf("127.0.0.2's squatter %d of the newest %d was evicted; the oldest go first", i, perIP)
		}
	}
	if n := alive(other); n != len(other) {
		t.Errorf("127.0.0.3 kept %d of %d connections: another address's flood evicted them", n, len(other))
	}
	if n := strings.Count(h.logs.String(), "too many open connections from one address"); n != 10-perIP {
		t.Errorf("%d per-IP evictions logged, want %d", n, 10-perIP)
	}

	// The noisy address itself can still push (it evicts one of its own).
	_, err := push(testContext(t), dialFrom(t, h.addr, "127.0.0.2"), s.secret, nil, s.wrongKey)
	wantCode(t, "wrong key from the capped address", err, codes.PermissionDenied)
	if _, err := push(testContext(t), dialFrom(t, h.addr, "127.0.0.4"), s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("operator push from another address: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
