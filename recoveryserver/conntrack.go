package recoveryserver

import (
	"context"
	"net"
	"sync"

	"go.uber.org/zap"
	"google.golang.org/grpc/stats"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// trackedListener knows every connection the gRPC server accepted and whether
// it finished its handshake. gRPC's Stop and GracefulStop wait for
// connections in their handshake until the handshake timeout; closing them
// ourselves is what lets Serve return promptly however a client stalls. It
// also bounds the number of open connections.
//
// It is the gRPC server's stats.Handler too: TagConn is called once a
// connection's transport is up, which is how a connection is marked as past
// its handshake.
type trackedListener struct {
	net.Listener
	maxConns int
	log      *zap.Logger

	mu      sync.Mutex
	closing bool                    // no new connection is served
	conns   map[string]*trackedConn // by remote address, unique per listener
}

func newTrackedListener(l net.Listener, maxConns int, log *zap.Logger) *trackedListener {
	return &trackedListener{Listener: l, maxConns: maxConns, log: log, conns: map[string]*trackedConn{}}
}

// Accept returns the next connection. Connections beyond the bound, or
// accepted while the server shuts down, are closed and skipped.
func (l *trackedListener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c := &trackedConn{Conn: raw, owner: l, key: raw.RemoteAddr().String()}
		l.mu.Lock()
		refuse := l.closing || len(l.conns) >= l.maxConns
		if !refuse {
			l.conns[c.key] = c
		}
		closing := l.closing
		l.mu.Unlock()
		if !refuse {
			return c, nil
		}
		if !closing {
			l.log.Warn("Refused recovery connection: too many open connections",
				logging.Event("recovery_connection_refused"),
				zap.String("peer.address", c.key), zap.Int("maxConnections", l.maxConns))
		}
		raw.Close()
	}
}

// closeHandshaking closes the connections that have not finished their
// handshake and refuses new ones.
func (l *trackedListener) closeHandshaking() {
	l.closeWhere(func(c *trackedConn) bool { return !c.established })
}

// closeAll closes every connection and refuses new ones.
func (l *trackedListener) closeAll() { l.closeWhere(func(*trackedConn) bool { return true }) }

func (l *trackedListener) closeWhere(match func(*trackedConn) bool) {
	l.mu.Lock()
	l.closing = true
	var victims []*trackedConn
	for _, c := range l.conns {
		if match(c) {
			victims = append(victims, c)
		}
	}
	l.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
}

func (l *trackedListener) forget(c *trackedConn) {
	l.mu.Lock()
	if l.conns[c.key] == c {
		delete(l.conns, c.key)
	}
	l.mu.Unlock()
}

// TagConn marks the connection as past its handshake (stats.Handler).
func (l *trackedListener) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	if info.RemoteAddr != nil {
		l.mu.Lock()
		if c, ok := l.conns[info.RemoteAddr.String()]; ok {
			c.established = true
		}
		l.mu.Unlock()
	}
	return ctx
}

// HandleConn, TagRPC and HandleRPC complete stats.Handler; they do nothing.
func (l *trackedListener) HandleConn(context.Context, stats.ConnStats) {}

func (l *trackedListener) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}

func (l *trackedListener) HandleRPC(context.Context, stats.RPCStats) {}

// trackedConn removes itself from its listener when closed.
type trackedConn struct {
	net.Conn
	owner       *trackedListener
	key         string
	established bool // guarded by owner.mu
	closeOnce   sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.owner.forget(c) })
	return err
}
