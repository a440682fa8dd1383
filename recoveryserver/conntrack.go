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
//
// At the bound a new connection is not refused but evicts the oldest
// connection that is still in its handshake, or else the oldest one with no
// RPC in flight: otherwise a handful of silent or idle peers, reconnecting
// as they time out, could keep the operator out for as long as they liked.
// Only when every connection is busy with an RPC is the newcomer refused.
type trackedListener struct {
	net.Listener
	maxConns int
	log      *zap.Logger

	mu      sync.Mutex
	closing bool                    // no new connection is served
	conns   map[string]*trackedConn // by remote address, unique per listener
	seq     uint64                  // accept order, to find the oldest
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
		c := &trackedConn{Conn: raw, owner: l, key: raw.RemoteAddr().String(), closed: make(chan struct{})}
		l.mu.Lock()
		var victim *trackedConn
		victimEstablished := false
		refuse := l.closing
		if !refuse && len(l.conns) >= l.maxConns {
			victim = l.evictableLocked()
			refuse = victim == nil
			victimEstablished = victim != nil && victim.established
		}
		if !refuse {
			l.seq++
			c.seq = l.seq
			l.conns[c.key] = c
		}
		closing := l.closing
		l.mu.Unlock()
		if victim != nil {
			l.log.Warn("Evicted a recovery connection to admit a new one: too many open connections",
				logging.Event("recovery_connection_evicted"), zap.String("peer.address", victim.key),
				zap.Bool("handshakeDone", victimEstablished), zap.Int("maxConnections", l.maxConns))
			victim.Close()
		}
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

// evictableLocked picks the oldest connection still in its handshake, else
// the oldest without an RPC in flight, else nil.
func (l *trackedListener) evictableLocked() *trackedConn {
	var handshaking, idle *trackedConn
	for _, c := range l.conns {
		switch {
		case !c.established:
			if handshaking == nil || c.seq < handshaking.seq {
				handshaking = c
			}
		case c.activeRPCs == 0:
			if idle == nil || c.seq < idle.seq {
				idle = c
			}
		}
	}
	if handshaking != nil {
		return handshaking
	}
	return idle
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

type connCtxKey struct{}

// TagConn marks the connection as past its handshake (stats.Handler) and
// tags its context so RPCs can be counted per connection.
func (l *trackedListener) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	if info.RemoteAddr != nil {
		l.mu.Lock()
		c, ok := l.conns[info.RemoteAddr.String()]
		if ok {
			c.established = true
		}
		l.mu.Unlock()
		if ok {
			return context.WithValue(ctx, connCtxKey{}, c)
		}
	}
	return ctx
}

// HandleConn and TagRPC complete stats.Handler; they do nothing.
func (l *trackedListener) HandleConn(context.Context, stats.ConnStats) {}

func (l *trackedListener) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}

// HandleRPC counts the RPCs in flight on each connection: a busy connection
// is never evicted.
func (l *trackedListener) HandleRPC(ctx context.Context, s stats.RPCStats) {
	c, ok := ctx.Value(connCtxKey{}).(*trackedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	switch s.(type) {
	case *stats.Begin:
		c.activeRPCs++
	case *stats.End:
		c.activeRPCs--
	}
	l.mu.Unlock()
}

// trackedConn removes itself from its listener when closed.
type trackedConn struct {
	net.Conn
	owner       *trackedListener
	key         string
	seq         uint64 // accept order
	established bool   // guarded by owner.mu
	activeRPCs  int    // guarded by owner.mu
	closeOnce   sync.Once
	closed      chan struct{} // closed once the connection is closed (by either side)
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.owner.forget(c)
		close(c.closed)
	})
	return err
}
