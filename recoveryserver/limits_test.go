package recoveryserver

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// expectClosed reads from a connection that sent nothing and wants the server
// to have closed it (EOF or reset), not a read timeout.
func expectClosed(t *testing.T, conn net.Conn) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // hang guard
	buf := make([]byte, 1024)
	for {
		_, err := conn.Read(buf)
		if err == nil {
			continue // e.g. the server's HTTP/2 settings frame
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the server left a stalled connection open")
		}
		if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("reading a stalled connection: %v", err)
		}
		return
	}
}

func TestHandshakeTimeoutClosesStalledConnection(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey}, func(c *Config) { c.HandshakeTimeout = 200 * time.Millisecond })

	raw := dialRaw(t, h.addr)
	expectClosed(t, raw)
	h.stillServing(t)

	cc := dial(t, h.addr, nil)
	if _, err := push(testContext(t), cc, s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("push after a timed-out handshake: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	cc.Close()
}

func TestIdleTimeoutClosesIdleConnection(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey}, func(c *Config) { c.IdleTimeout = 200 * time.Millisecond })

	// The client's connection reports when it ends: on the server's GOAWAY
	// either side may close it first. The test closes nothing before.
	serverClosed := make(chan struct{})
	var once sync.Once
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return &closeReportingConn{Conn: conn, onEnd: func() { once.Do(func() { close(serverClosed) }) }}, nil
	}
	cc, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dialer))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	if _, err := push(testContext(t), cc, s.secret, nil, s.wrongKey); err == nil {
		t.Fatal("wrong key accepted")
	}
	select {
	case <-serverClosed:
	case <-time.After(10 * time.Second): // hang guard; the default idle timeout is 30 s
		t.Fatal("the server kept an idle connection open")
	}
	h.stillServing(t)
}

// closeReportingConn calls onEnd when the connection ends, from either side.
type closeReportingConn struct {
	net.Conn
	onEnd func()
}

func (c *closeReportingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.onEnd()
	}
	return n, err
}

func (c *closeReportingConn) Close() error {
	c.onEnd()
	return c.Conn.Close()
}

func TestConnectionLimit(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey}, func(c *Config) {
		c.MaxConnections = 2
		c.HandshakeTimeout = time.Minute
	})
	first, second := dialRaw(t, h.addr), dialRaw(t, h.addr)
	// At the limit a newcomer evicts the oldest connection still in its
	// handshake, so silent peers cannot keep the operator out.
	third := dialRaw(t, h.addr)
	expectClosed(t, first)
	if !strings.Contains(h.logs.String(), "Evicted a recovery connection to admit a new one") {
		t.Error("eviction not logged")
	}

	// The stalled peers stay; a real client still gets through.
	cc := dial(t, h.addr, nil)
	if _, err := push(testContext(t), cc, s.secret, nil, s.diskKey, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("push while stalled peers hold the limit: %v", err)
	}
	_, _ = second, third
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	cc.Close()
}
