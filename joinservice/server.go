// Package joinservice is the reference JoinService: it issues rejoin tickets
// (the disk key for the requested disk, the measurement secret and the
// measurement salt, all derived from the cluster's master secret) to nodes
// whose attestation the transport credentials have already validated.
package joinservice

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/joinproto"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"google.golang.org/grpc/peer"
)

// LoggerName names the JoinService's logger.
const LoggerName = "joinService"

// diskUUIDPattern is the canonical form of a LUKS UUID (8-4-4-4-12 hex).
var diskUUIDPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Config configures a Server.
type Config struct {
	// MasterSecret is the cluster's master secret. The Server keeps a copy;
	// call Close to zero it.
	MasterSecret masterkey.MasterSecret
	// MaxConcurrent bounds the tickets being issued at once; more requests
	// are answered RESOURCE_EXHAUSTED with a RetryInfo hint.
	MaxConcurrent int
	// Log receives the service's log lines (a named child is used).
	Log *zap.Logger
	// Work, when set, runs inside the concurrency limit for every ticket.
	// Tests and benchmarks use it to give a request a service time.
	Work func(ctx context.Context) error
	// AllowUnattestedPeers serves peers whose connection did not validate
	// an attestation document (see attested). Tests only: in production the
	// aTLS credentials must have checked the node.
	AllowUnattestedPeers bool
}

// Server implements join.API.
type Server struct {
	joinproto.UnimplementedAPIServer

	secret          masterkey.MasterSecret
	admission       *admission
	log             *zap.Logger
	work            func(ctx context.Context) error
	allowUnattested bool
	// observe, when set by a test in this package, hears every admission
	// decision (to count requests and check that clients honour hints).
	observe func(diskUUID string, admitted bool, retryAfter time.Duration)
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if len(cfg.MasterSecret.Key) != masterkey.SecretSize || len(cfg.MasterSecret.Salt) != masterkey.SecretSize {
		return nil, errors.New("joinservice: master secret key and salt must be 32 bytes each")
	}
	if cfg.MaxConcurrent < 1 {
		return nil, fmt.Errorf("joinservice: MaxConcurrent must be at least 1, got %d", cfg.MaxConcurrent)
	}
	log := cfg.Log
	if log == nil {
		log = zap.NewNop()
	}
	return &Server{
		secret: masterkey.MasterSecret{
			Key:  append([]byte(nil), cfg.MasterSecret.Key...),
			Salt: append([]byte(nil), cfg.MasterSecret.Salt...),
		},
		admission:       newAdmission(cfg.MaxConcurrent),
		log:             log.Named(LoggerName),
		work:            cfg.Work,
		allowUnattested: cfg.AllowUnattestedPeers,
	}, nil
}

// Close zeroes the server's copy of the master secret. Call it only after
// the gRPC server has stopped.
func (s *Server) Close() {
	clear(s.secret.Key)
	clear(s.secret.Salt)
}

// IssueRejoinTicket hands the keys for one disk to an attested node.
func (s *Server) IssueRejoinTicket(ctx context.Context, req *joinproto.IssueRejoinTicketRequest) (*joinproto.IssueRejoinTicketResponse, error) {
	diskUUID := strings.ToLower(req.GetDiskUuid())
	if !diskUUIDPattern.MatchString(diskUUID) {
		s.log.Warn("Refusing rejoin ticket for malformed disk UUID", logging.Event("rejoin_ticket_malformed_uuid"))
		return nil, status.Error(codes.InvalidArgument, "disk_uuid must be a LUKS UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
	}

	if !s.allowUnattested && !attested(ctx) {
		s.log.Warn("Refusing rejoin ticket to a peer that did not attest", logging.Event("rejoin_ticket_unattested"), zap.String("uuid", diskUUID))
		return nil, status.Error(codes.Unauthenticated, "the connection carries no validated attestation")
	}

	release, retryAfter, ok := s.admission.acquire(ctx, diskUUID)
	if s.observe != nil {
		s.observe(diskUUID, ok, retryAfter)
	}
	if !ok {
		if err := ctx.Err(); err != nil {
			return nil, status.FromContextError(err).Err()
		}
		s.log.Debug("Pushing back rejoin ticket request",
			logging.Event("rejoin_ticket_overloaded"), zap.String("uuid", diskUUID),
			zap.Int("load", s.admission.load()), zap.Duration("retryAfter", retryAfter))
		return nil, overloaded(retryAfter)
	}
	defer release()

	start := time.Now()
	if s.work != nil {
		if err := s.work(ctx); err != nil {
			return nil, status.Errorf(codes.Unavailable, "issuing ticket: %v", err)
		}
	}
	resp, err := s.ticket(diskUUID)
	if err != nil {
		s.log.Error("Failed to derive rejoin ticket", logging.Event("rejoin_ticket_failed"), zap.String("uuid", diskUUID), zap.Error(err))
		return nil, status.Error(codes.Internal, "deriving keys failed")
	}
	s.log.Info("Issued rejoin ticket", logging.Event("rejoin_ticket_issued"),
		zap.String("uuid", diskUUID), zap.Duration("duration", time.Since(start)))
	return resp, nil
}

func (s *Server) ticket(diskUUID string) (*joinproto.IssueRejoinTicketResponse, error) {
	diskKey, err := s.secret.DiskKey(diskUUID)
	if err != nil {
		return nil, err
	}
	measurementSecret, err := s.secret.MeasurementSecret()
	if err != nil {
		return nil, err
	}
	measurementSalt, err := s.secret.MeasurementSalt()
	if err != nil {
		return nil, err
	}
	return &joinproto.IssueRejoinTicketResponse{
		StateDiskKey:      diskKey,
		MeasurementSecret: measurementSecret,
		MeasurementSalt:   measurementSalt,
	}, nil
}

// overloaded is RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail.
func overloaded(retryAfter time.Duration) error {
	st := status.New(codes.ResourceExhausted, "JoinService at capacity, retry later")
	withHint, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)})
	if err != nil {
		return st.Err()
	}
	return withHint.Err()
}

// attested reports whether the connection's aTLS handshake validated the
// peer's attestation document. It guards against a wiring mistake (the
// service started with credentials that do not validate) handing out keys.
func attested(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	info, ok := p.AuthInfo.(atls.AuthInfo)
	return ok && info.PeerAttested
}
