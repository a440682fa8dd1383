package rejoinclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
)

// errRefused marks an attempt whose TCP connection the endpoint refused (a
// node that is up without a JoinService, or a closed port).
var errRefused = errors.New("connection refused")

// dialTCP opens an attempt's TCP connection before anything else is spent on
// the endpoint. An endpoint that refuses the connection or never completes
// the TCP handshake (a stopped or deleted control-plane node) then costs one
// socket, not a gRPC channel and a TLS key share: an X25519MLKEM768 key share
// is ~95 µs of CPU on a 2-vCPU node, and all attempts of a round start at
// once, so on a node with dead endpoints that work queued up in front of the
// healthy endpoint's own handshake (BenchmarkTimeToKey's 5-dead case).
func dialTCP(ctx context.Context, endpoint string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", endpoint)
	switch {
	case err == nil:
		return conn, nil
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("connecting to %s: %w (%w)", endpoint, errRefused, err)
	case ctx.Err() != nil:
		// The attempt's deadline or the round's end: classified by ctx's
		// error (timeout or canceled).
		return nil, fmt.Errorf("connecting to %s: %w (%w)", endpoint, ctx.Err(), err)
	}
	return nil, fmt.Errorf("connecting to %s: %w", endpoint, err)
}

// firstThenDial is a gRPC dialer that hands out conn on its first call and
// dials anew on later ones (a kept connection that gRPC re-establishes).
func firstThenDial(conn net.Conn) func(context.Context, string) (net.Conn, error) {
	var mu sync.Mutex
	first := conn
	return func(ctx context.Context, addr string) (net.Conn, error) {
		mu.Lock()
		c := first
		first = nil
		mu.Unlock()
		if c != nil {
			return c, nil
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}
