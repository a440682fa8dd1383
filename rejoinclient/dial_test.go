package rejoinclient

import (
	"context"
	"net"
	"testing"
	"time"
)

// A refused endpoint fails in dialTCP, before any gRPC channel or TLS key
// share exists, and is still classified as refused.
func TestDialTCPRefusedIsClassifiedRefused(t *testing.T) {
	_, err := dialTCP(context.Background(), closedPort(t))
	if err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	if got := classify(err); got != classRefused {
		t.Errorf("classify(%v) = %q, want %q", err, got, classRefused)
	}
}

// The round's end during a dial is a cancellation, the attempt's deadline
// a timeout: what the operator reads in errorClass.
func TestDialTCPContextEndIsClassifiedByTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := dialTCP(ctx, closedPort(t)); classify(err) != classCanceled {
		t.Errorf("canceled dial: classify(%v) = %q, want %q", err, classify(err), classCanceled)
	}
	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := dialTCP(ctx, closedPort(t)); classify(err) != classTimeout {
		t.Errorf("expired dial: classify(%v) = %q, want %q", err, classify(err), classTimeout)
	}
}

// firstThenDial hands gRPC the connection dialTCP opened, once; a kept
// channel that reconnects later gets a new connection to the same address.
func TestFirstThenDialHandsOutTheDialledConnectionOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	first, err := dialTCP(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	dial := firstThenDial(first)
	got, err := dial(context.Background(), ln.Addr().String())
	if err != nil || got != first {
		t.Fatalf("first call = %v, %v; want the dialled connection", got, err)
	}
	again, err := dial(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatalf("second call: %v", err)
	}
	defer again.Close()
	if again == first {
		t.Fatal("second call handed out the first connection again")
	}
	for range 2 {
		select {
		case c := <-accepted:
			c.Close()
		case <-time.After(5 * time.Second):
			t.Fatal("the listener did not see two connections")
		}
	}
}
