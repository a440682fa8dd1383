package recoveryserver

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/diskmapper/disk-mapper/internal/nodestatus"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/recoverproto"
)

// What a refused server waits for (Config.WaitingFor, RefuseWith).
const (
	WaitingForOperator = "operator" // a refused disk
	WaitingForDisk     = "disk"     // no state disk attached
)

// statusState is what the Status RPC reads; Serve and the race write it.
type statusState struct {
	mu         sync.Mutex
	since      time.Time
	unlockedBy string // the winning source once the race is decided
}

func (s *statusState) decided(by string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unlockedBy == "" {
		s.unlockedBy = by
	}
}

// decidedBy is the source named by a context's cause, if the race was
// decided.
func decidedBy(ctx context.Context) (string, bool) {
	var d *unlock.DecidedError
	if errors.As(context.Cause(ctx), &d) {
		return d.Source, true
	}
	return "", errors.Is(context.Cause(ctx), unlock.ErrDecided)
}

// Status answers `dmctl status`. It is read-only and cheap: a snapshot
// under a mutex, no key material, no key check. It is served by the same
// gRPC server as Recover, so the same connection bounds, per-IP caps,
// handshake and idle timeouts, message size limit and bounded quotes apply;
// a connection that only asks for status never counts as useful, so it is
// the first to be evicted.
func (r *recoverService) Status(context.Context, *recoverproto.StatusRequest) (*recoverproto.StatusResponse, error) {
	resp := &recoverproto.StatusResponse{DiskUuid: r.diskUUID}
	r.status.mu.Lock()
	since, unlockedBy := r.status.since, r.status.unlockedBy
	r.status.mu.Unlock()
	resp.WaitingSinceUnix = since.Unix()
	waitingFor, reason := r.refusalKind()
	switch {
	case unlockedBy != "":
		resp.State = recoverproto.StatusResponse_UNLOCKED
		resp.UnlockedBy = unlockedBy
	case reason != "" && waitingFor == WaitingForDisk:
		resp.State = recoverproto.StatusResponse_WAITING_FOR_DISK
		resp.Reason = sanitizeReason(reason)
	case reason != "":
		resp.State = recoverproto.StatusResponse_DISK_REFUSED
		resp.Reason = sanitizeReason(reason)
	default:
		resp.State = recoverproto.StatusResponse_WAITING_FOR_KEY
	}
	if r.rejoin != nil {
		rj := r.rejoin()
		resp.RejoinRunning = rj.Running
		resp.RejoinAttempts = uint32(rj.Attempts)
		if !rj.NextRound.IsZero() {
			resp.NextRejoinUnixMs = rj.NextRound.UnixMilli()
		}
		for _, e := range rj.Endpoints {
			resp.Endpoints = append(resp.Endpoints, &recoverproto.EndpointStatus{
				Endpoint: e.Endpoint, Attempts: uint32(e.Attempts), LastErrorClass: e.LastErrorClass,
				LastAttemptUnix: e.LastAttempt.Unix(),
			})
		}
	}
	return resp, nil
}

// rejoinSnapshot is Config.Rejoin's type.
type rejoinSnapshot = func() nodestatus.Rejoin
