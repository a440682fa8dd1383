// Package dmctl is the logic of the operator CLI: pushing recovery keys to
// nodes that wait for one (`dmctl recover`) and computing the measurements
// an operator expects from a node.
package dmctl

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/diskmapper/disk-mapper/internal/backoff"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"google.golang.org/grpc/credentials"
)

// Defaults for RecoverConfig's zero values.
const (
	// DefaultAttemptTimeout bounds one connection + Recover stream. A push
	// takes milliseconds; the handshake includes a TPM quote on the node.
	DefaultAttemptTimeout = 15 * time.Second
	// DefaultBackoffBase and DefaultBackoffCap shape the pause between
	// attempts on a node that is not up yet. The cap is short because an
	// operator is watching and a node comes up at an unknown moment.
	DefaultBackoffBase = 250 * time.Millisecond
	DefaultBackoffCap  = 5 * time.Second
)

// RecoverConfig configures Recover.
type RecoverConfig struct {
	// Endpoints are the nodes' RecoveryServers as HOST:PORT
	// (see NormalizeEndpoints). All are served at once.
	Endpoints []string
	// MasterSecret is the cluster's master secret. Recover does not modify
	// it; the derived keys it sends are zeroed when Recover returns.
	MasterSecret masterkey.MasterSecret
	// Credentials secure every connection: aTLS that validates the node's
	// attestation in production.
	Credentials credentials.TransportCredentials
	// AttemptTimeout bounds one attempt; ctx bounds them all.
	AttemptTimeout time.Duration
	// BackoffBase and BackoffCap shape the pause between attempts on a node.
	BackoffBase, BackoffCap time.Duration
	// Progress, when set, hears every step on every node. Calls are
	// serialised, so it need not lock.
	Progress func(Progress)
}

// Stage is a step of the recovery of one node.
type Stage string

// The stages a Progress reports.
const (
	StageConnecting Stage = "connecting" // an attempt starts
	StageRetrying   Stage = "retrying"   // the attempt failed transiently; the next one follows RetryIn
	StageDiskUUID   Stage = "disk_uuid"  // the node attested and named its disk; its key is being pushed
	StagePushed     Stage = "pushed"     // the node accepted the key
	StageFailed     Stage = "failed"     // the node is given up on; Err says why
)

// Progress is one step on one node.
type Progress struct {
	Endpoint string
	Stage    Stage
	Attempt  int
	DiskUUID string
	RetryIn  time.Duration
	Err      error
}

// Result is the outcome for one node. Err is nil when the node accepted the
// key.
type Result struct {
	Endpoint string
	DiskUUID string
	Attempts int
	Duration time.Duration
	Err      error
}

// Recover pushes each node its disk key, all nodes at once, retrying nodes
// that are not reachable yet until ctx ends. It returns one Result per
// endpoint, in the order of cfg.Endpoints; the error is only for an unusable
// configuration.
func Recover(ctx context.Context, cfg RecoverConfig) ([]Result, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("recover: no endpoints")
	}
	if cfg.Credentials == nil {
		return nil, errors.New("recover: no transport credentials")
	}
	measurementSecret, err := cfg.MasterSecret.MeasurementSecret()
	if err != nil {
		return nil, fmt.Errorf("recover: deriving measurement secret: %w", err)
	}
	defer clear(measurementSecret)
	measurementSalt, err := cfg.MasterSecret.MeasurementSalt()
	if err != nil {
		return nil, fmt.Errorf("recover: deriving measurement salt: %w", err)
	}
	defer clear(measurementSalt)

	r := &recoverer{
		secret:            cfg.MasterSecret,
		measurementSecret: measurementSecret,
		measurementSalt:   measurementSalt,
		creds:             cfg.Credentials,
		attemptTimeout:    orDefault(cfg.AttemptTimeout, DefaultAttemptTimeout),
		backoff: backoff.Exponential{
			Base: orDefault(cfg.BackoffBase, DefaultBackoffBase),
			Cap:  orDefault(cfg.BackoffCap, DefaultBackoffCap),
		},
		progress: serialised(cfg.Progress),
	}
	results := make([]Result, len(cfg.Endpoints))
	var wg sync.WaitGroup
	for i, ep := range cfg.Endpoints {
		wg.Go(func() { results[i] = r.recoverNode(ctx, ep) })
	}
	wg.Wait()
	return results, nil
}

type recoverer struct {
	secret                             masterkey.MasterSecret
	measurementSecret, measurementSalt []byte
	creds                              credentials.TransportCredentials
	attemptTimeout                     time.Duration
	backoff                            backoff.Exponential
	progress                           func(Progress)
}

// recoverNode runs attempts on one node until one succeeds, one fails for a
// reason a retry cannot fix, or ctx ends.
func (r *recoverer) recoverNode(ctx context.Context, endpoint string) Result {
	start := time.Now()
	res := Result{Endpoint: endpoint}
	finish := func(err error) Result {
		res.Err = err
		res.Duration = time.Since(start)
		if err == nil {
			r.progress(Progress{Endpoint: endpoint, Stage: StagePushed, Attempt: res.Attempts, DiskUUID: res.DiskUUID})
		} else {
			r.progress(Progress{Endpoint: endpoint, Stage: StageFailed, Attempt: res.Attempts, DiskUUID: res.DiskUUID, Err: err})
		}
		return res
	}
	for {
		res.Attempts++
		r.progress(Progress{Endpoint: endpoint, Stage: StageConnecting, Attempt: res.Attempts})
		diskUUID, err := r.push(ctx, endpoint, res.Attempts)
		if diskUUID != "" {
			res.DiskUUID = diskUUID
		}
		if err == nil {
			return finish(nil)
		}
		if ctx.Err() != nil {
			return finish(fmt.Errorf("gave up after %d attempts (timeout): %w", res.Attempts, err))
		}
		if !retryable(err) {
			return finish(err)
		}
		// Equal jitter: at least half of the capped exponential window, so a
		// node that is not up is not hammered, and at most all of it, so
		// several nodes do not retry in lock-step.
		delay := r.backoff.EqualJitter(res.Attempts)
		r.progress(Progress{Endpoint: endpoint, Stage: StageRetrying, Attempt: res.Attempts, RetryIn: delay, Err: err})
		if backoff.Sleep(ctx, delay) != nil {
			return finish(fmt.Errorf("gave up after %d attempts (timeout): %w", res.Attempts, err))
		}
	}
}

func serialised(f func(Progress)) func(Progress) {
	if f == nil {
		return func(Progress) {}
	}
	var mu sync.Mutex
	return func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		f(p)
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
