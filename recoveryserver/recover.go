package recoveryserver

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/recoverproto"
)

// recoverService implements the Recover RPC for one Serve call.
type recoverService struct {
	recoverproto.UnimplementedAPIServer

	serveCtx      context.Context // ends when Serve stops
	diskUUID      string
	streamTimeout time.Duration
	msgTimeout    time.Duration
	check         unlock.Check
	log           *zap.Logger
	refusal       func() string // why the disk is refused; "" when it is not
	refusalKind   func() (waitingFor, reason string)
	rejoin        rejoinSnapshot
	status        statusState

	// checkSlot is a one-slot semaphore around check-and-accept, so the
	// check never runs twice at once and exactly one key can be accepted.
	// A channel rather than a mutex, so that waiting honours the stream's
	// deadline.
	checkSlot chan struct{}
	// accepted is closed (holding checkSlot) once check accepted a key.
	accepted chan struct{}
	// winnerConn is the connection that carried the accepted key (set
	// before accepted is closed; nil if it could not be told).
	winnerConn *trackedConn
	// graceOver is closed lateKeyGrace after the race was decided: a stream
	// still waiting for a message then ends with errAlreadyAccepted.
	graceOver  chan struct{}
	graceOnce  sync.Once
	graceTimer atomic.Pointer[time.Timer]
	// receivers counts the goroutines blocked in stream.Recv, so that Serve
	// can wait for them after gRPC closed every stream.
	receivers sync.WaitGroup
}

func newRecoverService(serveCtx context.Context, cfg Config, check unlock.Check) *recoverService {
	return &recoverService{
		serveCtx:      serveCtx,
		diskUUID:      cfg.DiskUUID,
		streamTimeout: cfg.StreamTimeout,
		msgTimeout:    cfg.MessageTimeout,
		check:         check,
		log:           cfg.Log,
		refusal:       func() string { return "" },
		refusalKind:   func() (string, string) { return "", "" },
		rejoin:        cfg.Rejoin,
		status:        statusState{since: time.Now()},
		checkSlot:     make(chan struct{}, 1),
		accepted:      make(chan struct{}),
		graceOver:     make(chan struct{}),
	}
}

func (r *recoverService) wasAccepted() bool {
	select {
	case <-r.accepted:
		return true
	default:
		return false
	}
}

// lateKeyGrace is how long, once the race is decided, a stream may still take
// to deliver its next message and have it answered. dmctl sends its key
// milliseconds after the disk UUID; a client slower than this learns only
// that the node is unlocked.
const lateKeyGrace = time.Second

// decided starts the late-key grace period; calling it again is a no-op.
func (r *recoverService) decided() {
	r.graceOnce.Do(func() { r.graceTimer.Store(time.AfterFunc(lateKeyGrace, func() { close(r.graceOver) })) })
}

// wait returns once every receiving goroutine has ended. Call it only after
// the gRPC server stopped (which ends every stream and so every Recv).
func (r *recoverService) wait() {
	r.receivers.Wait()
	if t := r.graceTimer.Load(); t != nil {
		t.Stop()
	}
}

// Recover runs one push: measurement_secret → disk UUID → state_disk_key →
// check. The returned status is what the client sees; nil (OK) only for an
// accepted key; AlreadyExists (StatusAlreadyUnlocked) for the key the node
// already accepted; FailedPrecondition "state disk refused: <reason>" on a
// refused or missing disk.
func (r *recoverService) Recover(stream recoverproto.API_RecoverServer) error {
	peerAddr := peerAddress(stream.Context())
	r.log.Info("Received recover call", logging.Event("recover_call_received"), zap.String("peer.address", peerAddr))

	ctx, cancel := context.WithTimeout(stream.Context(), r.streamTimeout)
	defer cancel()
	stopOnShutdown := context.AfterFunc(r.serveCtx, cancel)
	defer stopOnShutdown()

	err := r.recover(ctx, stream)
	if err != nil {
		st := status.Convert(err)
		r.log.Warn("Recover call refused", logging.Event("recover_call_refused"),
			zap.String("peer.address", peerAddr), zap.String("grpc.code", st.Code().String()),
			zap.String("reason", st.Message()))
	}
	return err
}

func (r *recoverService) recover(ctx context.Context, stream recoverproto.API_RecoverServer) error {
	first, err := r.recvWithin(ctx, stream, "measurement_secret")
	if err != nil {
		return err
	}
	defer zeroMessage(first)
	if err := validateSecretMessage(first); err != nil {
		return err
	}
	markUseful(ctx)
	if reason := r.refusal(); reason != "" {
		// No disk UUID (a foreign disk has none) and no key: the operator
		// learns why the node waits, and no key leaves dmctl for nothing.
		return refusedStatus(reason)
	}
	if err := stream.Send(&recoverproto.RecoverResponse{DiskUuid: r.diskUUID}); err != nil {
		return err
	}

	second, err := r.recvWithin(ctx, stream, "state_disk_key")
	if err != nil {
		return err
	}
	defer zeroMessage(second)
	key, err := keyFromMessages(first, second)
	if err != nil {
		return err
	}
	defer keyPending(ctx)()
	// The key aliases the messages' bytes; zeroing it zeroes them too. The
	// check must copy whatever it keeps beyond its return.
	defer key.Zero()

	return r.checkAndAccept(ctx, key)
}

// checkAndAccept runs check under the one-slot lock and, if it accepts,
// marks the server as done.
//
// Once the race is decided (by this server or another source) the check still
// runs: it compares the key with the winning one at no disk cost, so a late
// push learns the truth (AlreadyExists for the same key, PermissionDenied for
// another) instead of a blanket refusal.
func (r *recoverService) checkAndAccept(ctx context.Context, key unlock.Key) error {
	select {
	case r.checkSlot <- struct{}{}:
	case <-ctx.Done():
		return r.contextStatus(ctx)
	}
	defer func() { <-r.checkSlot }()

	err := r.check(ctx, key)
	if err == nil {
		r.log.Info("Received state disk key and measurement secret, shutting down server",
			logging.Event("recovery_key_accepted"))
		r.winnerConn, _ = ctx.Value(connCtxKey{}).(*trackedConn)
		r.status.decided("RecoveryServer")
		close(r.accepted)
		return nil
	}
	return r.checkStatus(ctx, err)
}

var errAlreadyAccepted = status.Error(codes.FailedPrecondition, "this node already accepted a key and is shutting down its recovery server")

// StatusAlreadyUnlocked is the code of a push whose key equals the one the
// node already accepted: the node is unlocked, nothing is left to do. dmctl
// counts it as a success.
const StatusAlreadyUnlocked = codes.AlreadyExists

// alreadyUnlockedStatus names who unlocked the node. The message is fixed
// per source; nothing the client sent is echoed.
func alreadyUnlockedStatus(source string) error {
	by := "an operator's push of this key"
	if source == "RejoinClient" {
		by = "its JoinService"
	}
	return status.Error(StatusAlreadyUnlocked, "already unlocked by "+by+": the key you pushed is the one the node accepted")
}

// maxReasonLen bounds the refusal reason sent to a client; it is the node's
// own text, but it may quote header fields the host wrote.
const maxReasonLen = 512

// refusedStatus is the answer of a node that refuses its state disk.
func refusedStatus(reason string) error {
	return status.Error(codes.FailedPrecondition, "state disk refused: "+sanitizeReason(reason))
}

func sanitizeReason(s string) string {
	out := make([]rune, 0, len(s))
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		out = append(out, c)
	}
	if len(out) > maxReasonLen {
		out = append(out[:maxReasonLen], '…')
	}
	return string(out)
}

// checkStatus maps a refusal of the check to the status the client sees. The
// messages are fixed strings: nothing the client sent is echoed.
func (r *recoverService) checkStatus(ctx context.Context, err error) error {
	var already *unlock.AlreadyUnlockedError
	switch {
	case errors.As(err, &already):
		return alreadyUnlockedStatus(already.Source)
	case errors.Is(err, unlock.ErrRefusedDisk):
		return refusedStatus(strings.TrimPrefix(err.Error(), unlock.ErrRefusedDisk.Error()+": "))
	case errors.Is(err, unlock.ErrWrongKey):
		return status.Error(codes.PermissionDenied, "the state disk key does not open this node's disk")
	case errors.Is(err, unlock.ErrMalformed):
		return status.Error(codes.InvalidArgument, "malformed key")
	case errors.Is(err, unlock.ErrDecided):
		return errAlreadyAccepted
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return r.contextStatus(ctx)
	default:
		// The cause is for the operator on the node's console, not the client.
		r.log.Error("Checking the pushed key failed", logging.Event("recovery_key_check_failed"), zap.Error(err))
		return status.Error(codes.Internal, "the node could not check the key")
	}
}

// contextStatus explains why ctx (the stream's context) ended.
func (r *recoverService) contextStatus(ctx context.Context) error {
	switch {
	case r.wasAccepted():
		return errAlreadyAccepted
	case r.serveCtx.Err() != nil:
		return status.Error(codes.Canceled, "the recovery server is shutting down")
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the recover call exceeded the server's stream deadline")
	default:
		return status.FromContextError(ctx.Err()).Err()
	}
}

var errMessageTimeout = errors.New("message timeout")

// recvWithin is recv bounded by the message timeout, which a client that
// holds a stream open and sends nothing runs into long before the stream
// timeout.
func (r *recoverService) recvWithin(ctx context.Context, stream recoverproto.API_RecoverServer, what string) (*recoverproto.RecoverMessage, error) {
	mctx, cancel := context.WithTimeoutCause(ctx, r.msgTimeout, errMessageTimeout)
	defer cancel()
	msg, err := r.recv(mctx, stream)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(mctx), errMessageTimeout) {
		return nil, status.Errorf(codes.DeadlineExceeded, "no %s within %v", what, r.msgTimeout)
	}
	return msg, err
}

// recv receives one message, giving up when ctx ends. A decided race does not
// cut it short: the push in flight gets its true answer (see Serve). stream.Recv itself cannot be interrupted: the goroutine ends
// once the handler has returned and gRPC has closed the stream.
func (r *recoverService) recv(ctx context.Context, stream recoverproto.API_RecoverServer) (*recoverproto.RecoverMessage, error) {
	type result struct {
		msg *recoverproto.RecoverMessage
		err error
	}
	results := make(chan result) // unbuffered: an abandoned message is zeroed, not left behind
	r.receivers.Add(1)
	go func() {
		defer r.receivers.Done()
		msg, err := stream.Recv()
		select {
		case results <- result{msg, err}:
		case <-ctx.Done():
			zeroMessage(msg)
		}
	}()

	select {
	case res := <-results:
		if errors.Is(res.err, io.EOF) {
			return nil, status.Error(codes.InvalidArgument, "the client closed the stream before sending measurement_secret and state_disk_key")
		}
		return res.msg, res.err
	case <-r.graceOver:
		return nil, errAlreadyAccepted
	case <-ctx.Done():
		return nil, r.contextStatus(ctx)
	}
}

func peerAddress(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
