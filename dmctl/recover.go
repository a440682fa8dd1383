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
	// StageAlreadyUnlocked: the node was already unlocked with this very
	// key (by its JoinService, or an earlier push); Detail is its message.
	StageAlreadyUnlocked Stage = "already_unlocked"
	StageFailed          Stage = "failed" // the node is given up on; Err says why
)

// Outcome is what became of one node.
type Outcome string

// The outcomes of Recover, one per node.
const (
	// OutcomeUnlocked: the node accepted the pushed key.
	OutcomeUnlocked Outcome = "unlocked"
	// OutcomeAlreadyUnlocked: the node had already accepted this same key
	// (from its JoinService, or an earlier push). A success.
	OutcomeAlreadyUnlocked Outcome = "already_unlocked"
	// OutcomeRefused: the node answered and refused: a key that does not
	// open its disk (the wrong master secret), a refused state disk, a
	// failed attestation, a malformed exchange. Retrying does not help.
	OutcomeRefused Outcome = "refused"
	// OutcomeUnreachable: no attempt got an answer before the timeout (not
	// up yet, network, port closed).
	OutcomeUnreachable Outcome = "unreachable"
)

// Success reports whether the node is unlocked.
func (o Outcome) Success() bool { return o == OutcomeUnlocked || o == OutcomeAlreadyUnlocked }

// Progress is one step on one node.
type Progress struct {
	Endpoint string
	Stage    Stage
	Attempt  int
	DiskUUID string
	RetryIn  time.Duration
	Err      error
	// Detail is the node's own message (StageAlreadyUnlocked).
	Detail string
}

// Result is the outcome for one node. Err is nil when Outcome is a success.
type Result struct {
	Endpoint string
	DiskUUID string
	Attempts int
	Duration time.Duration
	Outcome  Outcome
	// Detail is the node's message for OutcomeAlreadyUnlocked.
	Detail string
	Err    error
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
		res.Duration = time.Since(start)
		var already alreadyUnlocked
		switch {
		case err == nil:
			res.Outcome = OutcomeUnlocked
			r.progress(Progress{Endpoint: endpoint, Stage: StagePushed, Attempt: res.Attempts, DiskUUID: res.DiskUUID})
		case errors.As(err, &already):
			res.Outcome, res.Detail = OutcomeAlreadyUnlocked, already.message
			r.progress(Progress{Endpoint: endpoint, Stage: StageAlreadyUnlocked, Attempt: res.Attempts, DiskUUID: res.DiskUUID, Detail: already.message})
		default:
			res.Err = err
			res.Outcome = OutcomeRefused
			var g gaveUp
			if errors.As(err, &g) {
				res.Outcome = OutcomeUnreachable
			}
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
		var already alreadyUnlocked
		if err == nil || errors.As(err, &already) {
			return finish(err)
		}
		if !retryable(err) && ctx.Err() == nil {
			return finish(err)
		}
		if ctx.Err() != nil {
			if _, perm := err.(permanentError); perm {
				return finish(err)
			}
			return finish(gaveUp{fmt.Errorf("gave up after %d attempts (timeout): %w", res.Attempts, err)})
		}
		// Equal jitter: at least half of the capped exponential window, so a
		// node that is not up is not hammered, and at most all of it, so
		// several nodes do not retry in lock-step.
		delay := r.backoff.EqualJitter(res.Attempts)
		r.progress(Progress{Endpoint: endpoint, Stage: StageRetrying, Attempt: res.Attempts, RetryIn: delay, Err: err})
		if backoff.Sleep(ctx, delay) != nil {
			return finish(gaveUp{fmt.Errorf("gave up after %d attempts (timeout): %w", res.Attempts, err)})
		}
	}
}

// gaveUp marks the error of a node that never answered before the timeout.
type gaveUp struct{ err error }

func (g gaveUp) Error() string { return g.err.Error() }
func (g gaveUp) Unwrap() error { return g.err }

// GaveUp reports whether err (a Result's or a StageFailed Progress's) means
// the node never answered before the timeout (OutcomeUnreachable).
func GaveUp(err error) bool {
	var g gaveUp
	return errors.As(err, &g)
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
