package dmctl

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Failures a retry with the same master secret cannot fix.
var (
	// ErrKeyRefused: the node's check refused the key (PermissionDenied),
	// almost always because the master secret is not this cluster's.
	ErrKeyRefused = errors.New("the node refused the key (PermissionDenied): is this the cluster's master secret?")
	// ErrInvalid: the node refused the message as malformed (InvalidArgument).
	ErrInvalid = errors.New("the node refused the request as malformed (InvalidArgument)")
	// ErrNodeRefused: the node refuses the push (FailedPrecondition): its
	// state disk is refused (the message says why: "state disk refused:
	// <reason>"), or it was unlocked before this push's key arrived.
	ErrNodeRefused = errors.New("the node refuses the push (FailedPrecondition)")
	// ErrNoDiskUUID: the node named no disk. A node of this version answers
	// a refused disk with FailedPrecondition instead; an older one sent "".
	ErrNoDiskUUID = errors.New("the node sent no disk UUID: its state disk is probably refused (see its console, or dmctl status)")
	// ErrHandshake: the TLS/attestation handshake failed for a reason other
	// than the network, e.g. the node's measurements are not the expected ones.
	ErrHandshake = errors.New("the node failed the attested TLS handshake")
)

// permanentError marks an error a retry cannot fix.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

func permanent(err error) error { return permanentError{err} }

// alreadyUnlocked is the node's answer to a key equal to the one it already
// accepted (AlreadyExists): the node is unlocked, and the push a success.
type alreadyUnlocked struct{ message string }

func (a alreadyUnlocked) Error() string { return a.message }

// retryable reports whether another attempt on the node may succeed.
func retryable(err error) bool {
	var p permanentError
	if errors.As(err, &p) {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Canceled:
		// Not up yet, restarting, or busy serialising another push.
		return true
	}
	return false
}

// explain maps a failed attempt to an operator-facing error; handshakeErr is
// the handshake failure of the attempt's connection, if any.
func explain(err, handshakeErr error) error {
	var p permanentError
	if errors.As(err, &p) {
		return err
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.PermissionDenied:
		return permanent(fmt.Errorf("%w (%s)", ErrKeyRefused, st.Message()))
	case codes.InvalidArgument:
		return permanent(fmt.Errorf("%w: %s", ErrInvalid, st.Message()))
	case codes.AlreadyExists:
		return alreadyUnlocked{message: st.Message()}
	case codes.FailedPrecondition:
		return permanent(fmt.Errorf("%w: %s", ErrNodeRefused, st.Message()))
	case codes.Unavailable:
		if handshakeErr != nil && !transientNetworkError(handshakeErr) {
			return permanent(fmt.Errorf("%w: %v", ErrHandshake, handshakeErr))
		}
	}
	return err
}

// transientNetworkError tells a connection that failed (node not up yet,
// port forwarded but nobody listening, reset) from a handshake the peer or
// our validator refused.
func transientNetworkError(err error) bool {
	if errors.Is(err, atls.ErrAttestation) || errors.Is(err, attestation.ErrInvalidDocument) {
		return false
	}
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		return false
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "remote error" { // a TLS alert from the node
		return false
	}
	var netErr net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.As(err, &netErr)
}

// handshakeRecorder remembers why the client handshake of a connection
// failed: gRPC reports every handshake failure as Unavailable, which alone
// does not tell "node not up yet" from "node failed attestation".
type handshakeRecorder struct {
	credentials.TransportCredentials
	record *handshakeRecord
}

type handshakeRecord struct {
	mu  sync.Mutex
	err error
}

func newHandshakeRecorder(creds credentials.TransportCredentials) *handshakeRecorder {
	return &handshakeRecorder{TransportCredentials: creds, record: &handshakeRecord{}}
}

func (h *handshakeRecorder) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := h.TransportCredentials.ClientHandshake(ctx, authority, conn)
	if err != nil {
		h.record.mu.Lock()
		h.record.err = err
		h.record.mu.Unlock()
	}
	return c, info, err
}

// Clone shares the record, so a clone's failures are heard too.
func (h *handshakeRecorder) Clone() credentials.TransportCredentials {
	return &handshakeRecorder{TransportCredentials: h.TransportCredentials.Clone(), record: h.record}
}

// failure is the last handshake error of the connection, or nil.
func (h *handshakeRecorder) failure() error {
	h.record.mu.Lock()
	defer h.record.mu.Unlock()
	return h.record.err
}
