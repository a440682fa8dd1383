package recoveryserver

import (
	"context"
	"net"
	"sync"
	"time"

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
// At a bound a new connection is not refused but evicts one, chosen in this
// order (oldest first within each class):
//
//  1. a connection that has produced no useful message: still in its
//     handshake, or established with no stream, or holding streams that
//     sent nothing valid. This is what a squatter looks like, and the
//     operator's connection looks like this only for the milliseconds
//     between its handshake and its first message, while it is the
//     youngest of its class;
//  2. one that sent something useful before but has no RPC in flight now;
//  3. one whose streams sent a measurement_secret but no key yet (a
//     32-byte secret cannot be told from a forged one).
//
// A connection whose stream delivered a key (waiting for or running the
// check) is never evicted; only when every connection is in that state is
// the newcomer refused. Otherwise a handful of silent or idle peers,
// reconnecting as they time out, could keep the operator out for as long as
// they liked.
//
// The bounds are the total (maxConns) and the connections of one source IP
// (maxPerIP); a newcomer over its IP's bound evicts one of that IP's
// connections, so one IP cannot push another's out. The host controls the
// network and can speak from any number of addresses, so the per-IP bound
// is a mitigation; the eviction order is what keeps the operator's push
// possible.
type trackedListener struct {
	net.Listener
	maxConns int
	maxPerIP int
	log      *zap.Logger

	mu      sync.Mutex
	closing bool                    // no new connection is served
	conns   map[string]*trackedConn // by remote address, unique per listener
	perIP   map[string]int
	seq     uint64 // accept order, to find the oldest
}

func newTrackedListener(l net.Listener, maxConns, maxPerIP int, log *zap.Logger) *trackedListener {
	return &trackedListener{Listener: l, maxConns: maxConns, maxPerIP: maxPerIP, log: log,
		conns: map[string]*trackedConn{}, perIP: map[string]int{}}
}

// Accept returns the next connection. Connections beyond the bounds that
// can evict nobody, or accepted while the server shuts down, are closed and
// skipped.
func (l *trackedListener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := raw.RemoteAddr().String()
		c := &trackedConn{Conn: raw, owner: l, key: key, ip: ipOf(key), closed: make(chan struct{})}
		l.mu.Lock()
		var victims []eviction
		refuse, reason := l.closing, ""
		if !refuse && l.perIP[c.ip] >= l.maxPerIP {
			reason = "too many open connections from one address"
			if v := l.evictableLocked(func(o *trackedConn) bool { return o.ip == c.ip }); v != nil {
				victims = append(victims, l.evictLocked(v, reason))
			} else {
				refuse = true
			}
		}
		if !refuse && len(l.conns) >= l.maxConns {
			reason = "too many open connections"
			if v := l.evictableLocked(func(*trackedConn) bool { return true }); v != nil {
				victims = append(victims, l.evictLocked(v, reason))
			} else {
				refuse = true
			}
		}
		if !refuse {
			l.seq++
			c.seq = l.seq
			l.conns[c.key] = c
			l.perIP[c.ip]++
		}
		closing := l.closing
		l.mu.Unlock()
		for _, v := range victims {
			l.log.Warn("Evicted a recovery connection to admit a new one: "+v.reason,
				logging.Event("recovery_connection_evicted"), zap.String("peer.address", v.conn.key),
				zap.Bool("handshakeDone", v.established), zap.Bool("sentUsefulMessage", v.useful),
				zap.Int("maxConnections", l.maxConns), zap.Int("maxConnectionsPerIP", l.maxPerIP))
			v.conn.Close()
		}
		if !refuse {
			return c, nil
		}
		if !closing {
			l.log.Warn("Refused recovery connection: "+reason+", every one is checking a key",
				logging.Event("recovery_connection_refused"), zap.String("peer.address", c.key),
				zap.Int("maxConnections", l.maxConns), zap.Int("maxConnectionsPerIP", l.maxPerIP))
		}
		raw.Close()
	}
}

type eviction struct {
	conn                *trackedConn
	established, useful bool
	reason              string
}

// evictLocked takes c out of the bookkeeping at once, so that the counts
// the same Accept checks next already exclude it; the caller closes it.
func (l *trackedListener) evictLocked(c *trackedConn, reason string) eviction {
	l.removeLocked(c)
	return eviction{conn: c, established: c.established, useful: c.useful, reason: reason}
}

func (l *trackedListener) removeLocked(c *trackedConn) {
	if l.conns[c.key] != c {
		return
	}
	delete(l.conns, c.key)
	if l.perIP[c.ip]--; l.perIP[c.ip] <= 0 {
		delete(l.perIP, c.ip)
	}
}

// evictionClass orders connections for eviction (lower goes first); -1
// means never. See trackedListener.
func evictionClass(c *trackedConn) int {
	switch {
	case c.keysPending > 0:
		return -1
	case !c.useful:
		return 0
	case c.activeRPCs == 0:
		return 1
	default:
		return 2
	}
}

// evictableLocked picks, among the connections match accepts, the oldest
// of the lowest eviction class, or nil.
func (l *trackedListener) evictableLocked(match func(*trackedConn) bool) *trackedConn {
	var best *trackedConn
	bestClass := -1
	for _, c := range l.conns {
		class := evictionClass(c)
		if class < 0 || !match(c) {
			continue
		}
		if best == nil || class < bestClass || (class == bestClass && c.seq < best.seq) {
			best, bestClass = c, class
		}
	}
	return best
}

// ipOf is the IP address of a "host:port" remote address.
func ipOf(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// closeHandshaking closes the connections that have not finished their
// handshake and refuses new ones.
func (l *trackedListener) closeHandshaking() {
	l.closeWhere(func(c *trackedConn) bool { return !c.established })
}

// drain runs once the race is decided: it refuses new connections and
// closes the ones that carry nothing to answer (still in their handshake, or
// without an RPC in flight for hangUp), until none is left or deadline. A
// connection with a call in flight stays, so its push (or status call) gets
// its answer; once the call ended its client has hangUp to read the status
// and close first: a server that closes a connection whose peer still has
// bytes in flight makes the kernel send a reset, and the client may lose the
// status it had not read yet. A stream that stays silent is ended by the
// late-key grace. It reports whether every connection is gone.
func (l *trackedListener) drain(deadline time.Time, hangUp time.Duration) bool {
	for {
		now := time.Now()
		l.closeWhere(func(c *trackedConn) bool {
			return !c.established || (c.activeRPCs == 0 && c.keysPending == 0 && now.Sub(c.idleSince) >= hangUp)
		})
		l.mu.Lock()
		left := len(l.conns)
		l.mu.Unlock()
		if left == 0 {
			return true
		}
		if now.After(deadline) {
			return false
		}
		time.Sleep(drainPoll)
	}
}

// drainPoll is how often drain looks at the connections.
const drainPoll = 5 * time.Millisecond

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
	l.removeLocked(c)
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
			c.idleSince = time.Now()
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
		if c.activeRPCs == 0 {
			c.idleSince = time.Now()
		}
	}
	l.mu.Unlock()
}

// markUseful records that a stream of the connection behind ctx delivered a
// valid first message.
func markUseful(ctx context.Context) {
	if c, ok := ctx.Value(connCtxKey{}).(*trackedConn); ok {
		c.owner.mu.Lock()
		c.useful = true
		c.owner.mu.Unlock()
	}
}

// keyPending protects the connection behind ctx from eviction while a key
// it delivered waits for or runs the check; call the returned func after.
func keyPending(ctx context.Context) (done func()) {
	c, ok := ctx.Value(connCtxKey{}).(*trackedConn)
	if !ok {
		return func() {}
	}
	c.owner.mu.Lock()
	c.keysPending++
	c.owner.mu.Unlock()
	return func() {
		c.owner.mu.Lock()
		c.keysPending--
		c.owner.mu.Unlock()
	}
}

// trackedConn removes itself from its listener when closed.
type trackedConn struct {
	net.Conn
	owner       *trackedListener
	key         string
	ip          string
	seq         uint64    // accept order
	established bool      // guarded by owner.mu
	activeRPCs  int       // guarded by owner.mu
	idleSince   time.Time // established, or last RPC ended; guarded by owner.mu
	useful      bool      // a stream sent a valid first message; guarded by owner.mu
	keysPending int       // streams whose key waits for or runs the check; guarded by owner.mu
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
