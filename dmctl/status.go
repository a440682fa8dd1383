package dmctl

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/diskmapper/disk-mapper/recoverproto"
)

// DefaultStatusTimeout bounds one status query (connection, attestation,
// RPC).
const DefaultStatusTimeout = 15 * time.Second

// StatusResult is one node's answer to `dmctl status`. Err is set when the
// node did not answer; Outcome then says whether it refused (attestation)
// or was unreachable.
type StatusResult struct {
	Endpoint string
	Status   *recoverproto.StatusResponse
	Outcome  Outcome // "" when the node answered
	Err      error
}

// Status asks every node what it is doing, all at once, over creds (aTLS
// validating the node, as for Recover). ctx bounds all of it; each node
// gets one attempt.
func Status(ctx context.Context, endpoints []string, creds credentials.TransportCredentials) ([]StatusResult, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("status: no endpoints")
	}
	if creds == nil {
		return nil, errors.New("status: no transport credentials")
	}
	out := make([]StatusResult, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		wg.Go(func() { out[i] = statusOf(ctx, ep, creds) })
	}
	wg.Wait()
	return out, nil
}

func statusOf(ctx context.Context, endpoint string, creds credentials.TransportCredentials) StatusResult {
	res := StatusResult{Endpoint: endpoint}
	rec := newHandshakeRecorder(creds)
	conn, err := grpc.NewClient("passthrough:///"+endpoint, grpc.WithTransportCredentials(rec),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<10)))
	if err != nil {
		res.Err, res.Outcome = err, OutcomeRefused
		return res
	}
	defer conn.Close()
	st, err := recoverproto.NewAPIClient(conn).Status(ctx, &recoverproto.StatusRequest{}, grpc.WaitForReady(true))
	if err != nil {
		if hs := rec.failure(); hs != nil && !transientNetworkError(hs) {
			res.Err, res.Outcome = fmt.Errorf("%w: %v", ErrHandshake, hs), OutcomeRefused
			return res
		}
		err = explain(err, rec.failure())
		res.Err = err
		res.Outcome = OutcomeUnreachable
		var p permanentError
		if errors.As(err, &p) {
			res.Outcome = OutcomeRefused
		}
		if res.Outcome == OutcomeUnreachable {
			res.Err = fmt.Errorf("no answer before the timeout: %w", err)
		}
		return res
	}
	res.Status = st
	return res
}
