// Package recoveryserver is the gRPC server an operator pushes a node's disk
// key to with `dmctl recover` (DESIGN.md §3 Recover contract, §4 rules). It is
// one of the two key sources of the node daemon: every key it receives is
// handed to an unlock.Check, and the first one the check accepts ends the
// server.
//
// Protocol of one Recover stream: the client sends measurement_secret (it may
// carry measurement_salt), the server answers with its disk UUID, the client
// sends state_disk_key, the server calls the check. An accepted key ends the
// RPC with OK and shuts the server down; any other outcome ends the RPC with a
// status (PermissionDenied, InvalidArgument, FailedPrecondition, ...) and the
// server keeps serving.
//
// # Abuse
//
// In a confidential VM the cloud host is the adversary, and it controls
// every connection to this port: it can open as many as it likes, from as
// many source addresses as it likes, and it can always keep an operator
// out by dropping the operator's packets. What the server guarantees is
// that no pattern of connections makes that cheaper than controlling the
// network, and that none of them delays the node's own RejoinClient:
//
//   - Every aTLS handshake costs the node a TPM quote. The credentials the
//     daemon passes use attestation.NewBackgroundIssuer: a few quotes at
//     once (constants.RecoveryMaxConcurrentQuotes), a few per source IP
//     (constants.RecoveryMaxQuotesPerSource), fail fast beyond that, and
//     always behind the RejoinClient's quotes. A connection that closes,
//     is evicted or times out before its quote is made never gets one.
//   - Connections are bounded in total (MaxConnections) and per source IP
//     (MaxConnectionsPerIP). At a bound the newcomer evicts the oldest
//     connection that has produced no useful message (see trackedListener),
//     so squatters that hold Recover streams and send nothing cannot lock
//     the operator out; only connections whose key is being checked are
//     never evicted. The per-IP bound is a mitigation only: the host can
//     spoof addresses on the virtual NIC.
//   - Each client message of a stream must arrive within MessageTimeout
//     (seconds), the whole stream within StreamTimeout.
//   - Cancelling Serve closes every connection, which also abandons every
//     quote still waiting for the TPM: Serve returns within about one
//     quote's time however many connections are open.
package recoveryserver

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/nodestatus"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/recoverproto"
)

// Defaults for the Config fields that internal/constants does not cover.
const (
	// DefaultStreamTimeout bounds one Recover stream from its first byte to
	// its status. `dmctl recover` needs milliseconds; the bound exists so that
	// a client that sends measurement_secret and then nothing cannot hold a
	// stream (or the check) forever.
	DefaultStreamTimeout = 30 * time.Second
	// DefaultMaxConcurrentStreams bounds the streams of one connection. One
	// is all an honest client needs; a few allow a retry on the same
	// connection while a refused stream is still being torn down.
	DefaultMaxConcurrentStreams = 4
	// DefaultMaxConnections bounds the open connections (including ones still
	// in their handshake); at the bound one is evicted (see Config).
	DefaultMaxConnections = 16
	// DefaultMaxConnectionsPerIP bounds the open connections of one source
	// IP address. An operator needs one; the bound keeps one address from
	// filling the table, but a host can use many addresses.
	DefaultMaxConnectionsPerIP = 8
	// clientHangUpTimeout bounds the wait for the winning client to close
	// its connection after reading OK.
	clientHangUpTimeout = 500 * time.Millisecond
	// gracefulStopTimeout bounds how long the server waits, after a key was
	// accepted, for the accepting RPC and its connection to finish cleanly
	// before it closes every connection hard.
	gracefulStopTimeout = 2 * time.Second
	// maxHeaderListSize bounds the metadata of a request; gRPC's default is
	// 16 MiB, and a recovery client sends almost none.
	maxHeaderListSize = 16 << 10
)

// Config configures a Server. Zero values select the defaults.
type Config struct {
	// DiskUUID is the lowercase LUKS UUID of the state disk; the server sends
	// it to the client, which derives the disk key from it.
	DiskUUID string
	// Refusal, if set, says why the node refuses its state disk: every push
	// is then answered FailedPrecondition "state disk refused: <Refusal>"
	// right after its measurement_secret, before any disk UUID or key is
	// exchanged (a foreign disk has no UUID to send). See also RefuseWith.
	Refusal string
	// WaitingFor says what a refused server waits for: WaitingForOperator
	// (default) or WaitingForDisk. Only the Status RPC reports it.
	WaitingFor string
	// Rejoin, if set, reports the RejoinClient's progress for the Status
	// RPC (a nodestatus.Board's Rejoin method).
	Rejoin func() nodestatus.Rejoin
	// Listener is where the server accepts connections. Serve owns it: it is
	// closed when Serve returns.
	Listener net.Listener
	// Credentials secure every connection. In production they are aTLS with
	// the node as issuer (the node proves itself; the operator validates).
	// Tests may pass insecure or plain TLS credentials. Nil is refused.
	Credentials credentials.TransportCredentials
	// Log is the server's logger, already named constants.LoggerRecoveryServer
	// by the caller. gRPC call lines go to its child "gRPC". Nil discards.
	Log *zap.Logger

	// MaxMessageSize bounds every received message
	// (default constants.MaxRecoverMessageSize). Larger ones end the stream
	// with ResourceExhausted.
	MaxMessageSize int
	// HandshakeTimeout bounds the TLS/aTLS and HTTP/2 handshake of one
	// connection (default constants.RecoveryHandshakeTimeout).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection without streams after this long
	// (default constants.RecoveryIdleTimeout).
	IdleTimeout time.Duration
	// StreamTimeout bounds one Recover stream, the check included
	// (default DefaultStreamTimeout).
	StreamTimeout time.Duration
	// MessageTimeout bounds the wait for each client message of a stream:
	// measurement_secret from the stream's start, state_disk_key from the
	// disk-UUID reply (default constants.RecoveryMessageTimeout). A stream
	// that sends nothing ends with DeadlineExceeded after it, and its
	// connection stays first in line for eviction.
	MessageTimeout time.Duration
	// MaxConcurrentStreams bounds the concurrent streams of one connection
	// (default DefaultMaxConcurrentStreams).
	MaxConcurrentStreams uint32
	// MaxConnections bounds the open connections (default
	// DefaultMaxConnections). At the bound a newcomer evicts the oldest
	// connection that has sent no useful message (in its handshake, or
	// holding streams that sent nothing), else the oldest idle one, else
	// the oldest whose streams still owe their key; a connection whose key
	// is being checked is never evicted, and only then is the newcomer
	// refused.
	MaxConnections int
	// MaxConnectionsPerIP bounds the open connections of one source IP
	// address (default DefaultMaxConnectionsPerIP, at most MaxConnections).
	// A newcomer over it evicts one of its own address's connections in the
	// same order. It is a mitigation, not a defence: the host can speak from
	// any number of addresses.
	MaxConnectionsPerIP int
}

func (c Config) withDefaults() Config {
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = constants.MaxRecoverMessageSize
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = constants.RecoveryHandshakeTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = constants.RecoveryIdleTimeout
	}
	if c.StreamTimeout <= 0 {
		c.StreamTimeout = DefaultStreamTimeout
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxConnectionsPerIP <= 0 {
		c.MaxConnectionsPerIP = DefaultMaxConnectionsPerIP
	}
	c.MaxConnectionsPerIP = min(c.MaxConnectionsPerIP, c.MaxConnections)
	if c.MessageTimeout <= 0 {
		c.MessageTimeout = constants.RecoveryMessageTimeout
	}
	return c
}

// Server is the RecoveryServer. Create it with New and run it once with Serve.
type Server struct {
	cfg     Config
	served  atomic.Bool
	refusal atomic.Pointer[[2]string] // waitingFor, reason
	// ready is closed once Serve has logged "Starting RecoveryServer" (the
	// listener is bound before New), or when Serve refused to start.
	ready     chan struct{}
	readyOnce sync.Once
}

// Ready is closed once Serve has announced the server on the log (or gave
// up before serving), so the caller can log "Waiting for decryption key"
// after it (seed order).
func (s *Server) Ready() <-chan struct{} { return s.ready }

func (s *Server) markReady() { s.readyOnce.Do(func() { close(s.ready) }) }

// RefuseWith sets Config.WaitingFor and Config.Refusal on a Server that is
// not serving yet (setup.Manager calls it on the sources of a refused or
// missing disk).
func (s *Server) RefuseWith(waitingFor, reason string) {
	s.refusal.Store(&[2]string{waitingFor, reason})
}

func (s *Server) refusalReason() string {
	_, reason := s.refusalKind()
	return reason
}

func (s *Server) refusalKind() (waitingFor, reason string) {
	if r := s.refusal.Load(); r != nil {
		waitingFor, reason = r[0], r[1]
	} else {
		waitingFor, reason = s.cfg.WaitingFor, s.cfg.Refusal
	}
	if reason != "" && waitingFor == "" {
		waitingFor = WaitingForOperator
	}
	return waitingFor, reason
}

// New returns a Server for cfg. It does not touch the network; Serve does.
func New(cfg Config) *Server {
	return &Server{cfg: cfg.withDefaults(), ready: make(chan struct{})}
}

// Name is the key source's name in the race's logs.
func (s *Server) Name() string { return "RecoveryServer" }

// ErrServed is returned by a second call of Serve.
var ErrServed = errors.New("recovery server: Serve called more than once")

// Serve accepts connections on the configured listener and hands every pushed
// key to check. It returns in exactly one of three ways:
//
//   - check accepted a key: Serve returns nil once the accepting RPC has ended
//     with OK. It stops accepting connections at once, closes those that sent
//     nothing useful, and lets every other push in flight get its true answer
//     (the check compares a late key with the accepted one: AlreadyExists for
//     the same key, PermissionDenied for another); a stream that has not sent
//     its next message within lateKeyGrace ends with FailedPrecondition. It
//     waits up to gracefulStopTimeout for all of that (GracefulStop), then
//     closes every remaining connection (Stop).
//   - ctx ends with cause unlock.ErrDecided (another source's key won the
//     race): as above, so that a push racing the winning rejoin hears
//     "already unlocked" instead of a reset connection; Serve returns
//     ctx.Err().
//   - ctx ends otherwise: Serve closes every connection at once, which
//     cancels the in-flight RPCs (their checks see a cancelled context), and
//     returns ctx.Err().
//   - the listener fails: Serve stops as for ctx and returns Accept's error.
//
// Connections still in their handshake are closed in every case, so a stalled
// client delays none of them. When Serve returns, the listener is closed and
// no goroutine Serve started is left. Serve may be called once; it returns
// ErrServed after that. A nil check or nil Credentials is refused (the
// listener is closed then, too).
//
// Pushes are serialised: check is never called concurrently by this server. A
// stream whose key is ready while another check runs waits for it, bounded by
// its stream deadline; waiting streams do not hold anything while their
// client is slow, because the lock is taken only after the key has arrived.
func (s *Server) Serve(ctx context.Context, check unlock.Check) error {
	defer s.markReady()
	lis := s.cfg.Listener
	if lis == nil {
		return errors.New("recovery server: no listener configured")
	}
	if !s.served.CompareAndSwap(false, true) {
		return ErrServed
	}
	switch {
	case check == nil:
		lis.Close()
		return errors.New("recovery server: nil unlock check")
	case s.cfg.Credentials == nil:
		lis.Close()
		return errors.New("recovery server: no transport credentials configured (tests pass insecure ones explicitly)")
	}

	log := s.cfg.Log
	fields := []zap.Field{logging.Event("recovery_server_started"),
		zap.String("address", lis.Addr().String()), zap.String("uuid", s.cfg.DiskUUID)}
	if reason := s.refusalReason(); reason != "" {
		fields = append(fields, zap.String("refusal", reason))
	}
	log.Info("Starting RecoveryServer", fields...)
	s.markReady()

	// serveCtx is not ctx's child: when another source won the race (ctx
	// ends with cause unlock.ErrDecided) the pushes in flight still get
	// their answer before it ends (see drain below).
	serveCtx, cancelServe := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelServe()

	conns := newTrackedListener(lis, s.cfg.MaxConnections, s.cfg.MaxConnectionsPerIP, log)
	service := newRecoverService(serveCtx, s.cfg, check)
	if waitingFor, reason := s.refusalKind(); reason != "" {
		service.refusal = func() string { return reason }
		service.refusalKind = func() (string, string) { return waitingFor, reason }
	}
	grpcServer := s.newGRPCServer(conns)
	recoverproto.RegisterAPIServer(grpcServer, service)

	serveErr := make(chan error, 1)
	go func() { serveErr <- grpcServer.Serve(conns) }()

	var result error
	select {
	case <-service.accepted:
		service.decided()
		s.awaitClientHangUp(service.winnerConn)
		s.stopGracefully(grpcServer, conns)
	case <-ctx.Done():
		result = ctx.Err()
		if by, ok := decidedBy(ctx); ok {
			service.status.decided(by)
			// Another source's key opened the disk. A push in flight is
			// answered (already unlocked, or wrong key) before its
			// connection closes: the operator must not retry for minutes
			// against a node that unlocked.
			s.stopGracefully(grpcServer, conns)
		}
	case err := <-serveErr:
		result = err
		serveErr <- err // drained again below
	}
	if result != nil && service.wasAccepted() {
		// A key won at the same moment ctx ended or Accept failed: the key
		// opened the disk, and that is what the caller must hear.
		result = nil
	}
	cancelServe() // unblocks every handler still waiting
	conns.closeAll()
	grpcServer.Stop() // no-op after a completed GracefulStop
	if err := <-serveErr; err != nil && result == nil && !service.wasAccepted() {
		result = err
	}
	service.wait()

	stopped := []zap.Field{logging.Event("recovery_server_stopped"), zap.Bool("keyAccepted", service.wasAccepted())}
	if result != nil {
		stopped = append(stopped, zap.Error(result))
	}
	log.Info("RecoveryServer stopped", stopped...)
	return result
}

func (s *Server) newGRPCServer(conns *trackedListener) *grpc.Server {
	return grpc.NewServer(
		grpc.Creds(s.cfg.Credentials),
		grpc.MaxRecvMsgSize(s.cfg.MaxMessageSize),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		grpc.ConnectionTimeout(s.cfg.HandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: s.cfg.IdleTimeout}),
		grpc.MaxConcurrentStreams(s.cfg.MaxConcurrentStreams),
		// Stop must not return while a handler (and so a check) still runs.
		grpc.WaitForHandlers(true),
		grpc.StatsHandler(conns),
		grpc.StreamInterceptor(loggingStreamInterceptor(s.cfg.Log.Named("gRPC"))),
	)
}

// awaitClientHangUp gives the operator's client the chance to read the OK and
// close its connection first. A server that closes a connection whose peer
// still has bytes in flight (its END_STREAM, a window update) makes the
// kernel send a reset, and the client may lose the OK it had not read yet:
// dmctl would report a failure for a key the node took.
func (s *Server) awaitClientHangUp(winner *trackedConn) {
	if winner == nil {
		return
	}
	timer := time.NewTimer(clientHangUpTimeout)
	defer timer.Stop()
	select {
	case <-winner.closed:
	case <-timer.C:
	}
}

// stopGracefully runs once the race is decided: it lets the accepting RPC
// finish with OK and every push that is past its measurement_secret get its
// true answer (AlreadyExists for the accepted key, PermissionDenied for
// another; see recoverService.checkAndAccept). It refuses new connections,
// closes those with nothing to answer (still in their handshake, or without
// an RPC in flight for clientHangUpTimeout; see trackedListener.drain), and
// waits for the rest for at most gracefulStopTimeout in all; streams that
// stay silent end after lateKeyGrace. However a peer stalls, the node's
// boot waits no longer than that.
func (s *Server) stopGracefully(grpcServer *grpc.Server, conns *trackedListener) {
	start := time.Now()
	conns.drain(start.Add(gracefulStopTimeout), clientHangUpTimeout)
	done := make(chan struct{})
	go func() {
		grpcServer.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(max(gracefulStopTimeout-time.Since(start), 0))
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.cfg.Log.Warn("Graceful shutdown of the RecoveryServer timed out, closing connections",
			logging.Event("recovery_server_forced_stop"), zap.Duration("timeout", gracefulStopTimeout))
		conns.closeAll()
		grpcServer.Stop()
		<-done
	}
}
