// Package rejoinclient is the key source that asks the cluster's JoinService
// for this node's rejoin ticket (state disk key + measurement secret).
//
// Each round it re-discovers the JoinService endpoints, tries all of them in
// parallel with staggered starts (happy-eyeballs style: a failure starts the
// next attempt at once), hands the first ticket to the race's unlock.Check
// and stops as soon as a key wins. Rounds in which every endpoint failed are
// separated by capped exponential backoff with full jitter, and an endpoint
// that answers RESOURCE_EXHAUSTED with a retry hint is not asked again
// before the hint. A round in which every endpoint pushed back with a hint
// is followed by a wait for the earliest hint only, with no backoff on top:
// the hint is the service's schedule (the reference JoinService reserves a
// slot for it), and jitter on top would only leave that slot idle. The
// connection of a pushed-back attempt is kept for the endpoint's next try
// when the hint is short (see maxConnReuseHint). The log lines are those of
// DESIGN.md §5 / seed 003.
package rejoinclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/diskmapper/disk-mapper/internal/backoff"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// EndpointSource yields the JoinService endpoints ("IP:PORT") to try this
// round. It is asked again every round, so it may change its answer.
type EndpointSource interface {
	Endpoints(ctx context.Context) ([]string, error)
}

// Defaults for the zero values of Config's timing fields.
const (
	// DefaultAttemptTimeout bounds one attempt (dial, aTLS handshake with a
	// TPM quote, RPC). It is what a blackholed endpoint costs a round, so it
	// is generous for a healthy control plane but far below the seed's 20 s.
	DefaultAttemptTimeout = 10 * time.Second
	// DefaultStagger is no added delay: attempts start back to back in
	// (shuffled) list order, and a failing one frees the next at once. See
	// Config.Stagger for why a larger default would not pay off.
	DefaultStagger = 0
	// DefaultBackoffBase and DefaultBackoffCap shape the pause between
	// failed rounds: full jitter in [0, min(cap, base·2^(n-1))).
	DefaultBackoffBase = 500 * time.Millisecond
	DefaultBackoffCap  = 15 * time.Second
)

// Config configures a Client. Zero timing values mean the defaults.
type Config struct {
	// DiskUUID is the lowercase LUKS UUID of the state disk.
	DiskUUID string
	// Endpoints is asked for the JoinService endpoints every round.
	Endpoints EndpointSource
	// Credentials secure every connection (aTLS in production).
	Credentials credentials.TransportCredentials
	// Log is already named constants.LoggerRejoinClient by the caller.
	Log *zap.Logger

	// AttemptTimeout bounds each attempt; the parent context bounds it too.
	AttemptTimeout time.Duration
	// Stagger is the head start each attempt gets over the next one; an
	// attempt that fails starts the next one immediately (happy eyeballs).
	// Zero (the default) starts all attempts back to back. Why not more:
	// a stagger only saves the JoinService a duplicate request if it is
	// longer than a healthy attempt, but the time-to-key target (≤ 1.5× the
	// healthy-only time with 5 dead endpoints, 3 of them hanging, ahead of
	// the healthy one) needs 3·Stagger ≤ 0.5·healthy, i.e. a stagger far
	// shorter than a healthy attempt, so it would never save a request. On
	// loopback a healthy TLS attempt takes ~1.2 ms and Go timers below 1 ms
	// fire after ~1 ms when the process is idle (netpoll granularity), so
	// any stagger > 0 costs ≥ 1 ms per hanging endpoint (measured in
	// BenchmarkTimeToKey, -rejoin.stagger). Storms are bounded instead by
	// one attempt per endpoint per round, the per-round shuffle, full-jitter
	// backoff between rounds, retry hints, and cancelling all other attempts
	// the moment a key wins. With aTLS over a real network (a healthy
	// attempt of ~100 ms) a few milliseconds are affordable.
	Stagger time.Duration
	// BackoffBase and BackoffCap shape the pause after a failed round.
	BackoffBase, BackoffCap time.Duration
	// Rand returns uniform values in [0, 1) for the backoff jitter and the
	// endpoint shuffle; nil means math/rand/v2. Tests make it deterministic.
	Rand func() float64
	// KeepOrder tries endpoints in the order the source gives them. By
	// default each round shuffles them so that a cluster of rebooting nodes
	// spreads its requests over the control plane instead of all hitting the
	// first node of the list.
	KeepOrder bool
}

// Client is the RejoinClient key source. Serve may be called once at a time.
type Client struct {
	cfg            Config
	diskUUID       string
	creds          credentials.TransportCredentials
	log            *zap.Logger
	attemptTimeout time.Duration
	stagger        time.Duration
	backoff        backoff.Exponential
	rand           func() float64

	// notBefore holds the retry hints endpoints sent with
	// RESOURCE_EXHAUSTED. Only Serve's goroutine touches it.
	notBefore map[string]time.Time
	// conns holds connections kept from pushed-back attempts, by endpoint.
	// Only Serve's goroutine touches it; all are closed when Serve returns.
	conns map[string]*grpc.ClientConn
	// ready is closed once Serve has logged "Starting RejoinClient".
	ready     chan struct{}
	readyOnce sync.Once
}

// Ready is closed once Serve has announced the client on the log, so the
// caller can log "Waiting for decryption key" after it (seed order).
func (c *Client) Ready() <-chan struct{} { return c.ready }

// New returns a Client for cfg, filling in defaults.
func New(cfg Config) *Client {
	c := &Client{
		cfg:            cfg,
		diskUUID:       cfg.DiskUUID,
		creds:          cfg.Credentials,
		log:            cfg.Log,
		attemptTimeout: orDefault(cfg.AttemptTimeout, DefaultAttemptTimeout),
		stagger:        max(cfg.Stagger, DefaultStagger),
		rand:           cfg.Rand,
		notBefore:      map[string]time.Time{},
		conns:          map[string]*grpc.ClientConn{},
		ready:          make(chan struct{}),
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if c.rand == nil {
		c.rand = rand.Float64
	}
	c.backoff = backoff.Exponential{
		Base: orDefault(cfg.BackoffBase, DefaultBackoffBase),
		Cap:  orDefault(cfg.BackoffCap, DefaultBackoffCap),
		Rand: c.rand,
	}
	c.backoff.Cap = max(c.backoff.Cap, c.backoff.Base)
	return c
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Name names the key source in the race's logs.
func (c *Client) Name() string { return "RejoinClient" }

// errAllFailed: a round ended without a key.
var errAllFailed = errors.New("failed to rejoin on all endpoints")

// Serve runs rounds until check accepts a key (returns nil) or ctx ends
// (returns ctx.Err()). If check reports that another key already won, Serve
// returns an error wrapping unlock.ErrDecided. Every goroutine and connection
// Serve started has ended when it returns.
func (c *Client) Serve(ctx context.Context, check unlock.Check) (err error) {
	start := time.Now()
	c.log.Info("Starting RejoinClient", logging.Event("rejoin_client_started"))
	c.readyOnce.Do(func() { close(c.ready) })
	defer func() {
		c.log.Info("RejoinClient stopped", logging.Event("rejoin_client_stopped"),
			zap.Bool("keyAccepted", err == nil), zap.NamedError("reason", err),
			zap.Int64("durationMs", time.Since(start).Milliseconds()))
	}()
	if err := c.validate(check); err != nil {
		return err
	}
	defer c.closeConns(nil)

	failedRounds := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		endpoints, err := c.discover(ctx)
		if err == nil {
			c.closeConns(endpoints)
			err = c.round(ctx, endpoints, check)
			switch {
			case err == nil:
				return nil
			case errors.Is(err, errAllHeldOff):
				// Every endpoint asked us to wait: wait for the earliest
				// hint, which is not a failure of ours, so no backoff
				// and no jitter on top (the service reserved that time).
				if err := backoff.Sleep(ctx, c.earliestHint()); err != nil {
					return err
				}
				continue
			case !errors.Is(err, errAllFailed):
				return err
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		failedRounds++
		delay := c.backoff.FullJitter(failedRounds)
		c.log.Debug("Waiting before the next rejoin round", logging.Event("rejoin_backoff"),
			zap.Int64("retryInMs", delay.Milliseconds()), zap.Int("failedRounds", failedRounds))
		if err := backoff.Sleep(ctx, delay); err != nil {
			return err
		}
	}
}

func (c *Client) validate(check unlock.Check) error {
	switch {
	case check == nil:
		return errors.New("rejoinclient: no check function")
	case c.cfg.Endpoints == nil:
		return errors.New("rejoinclient: no endpoint source configured")
	case c.creds == nil:
		return errors.New("rejoinclient: no transport credentials configured")
	case c.diskUUID == "":
		return errors.New("rejoinclient: no disk UUID configured")
	}
	return nil
}

// discover asks the source for this round's endpoints, without duplicates.
func (c *Client) discover(ctx context.Context) ([]string, error) {
	endpoints, err := c.cfg.Endpoints.Endpoints(ctx)
	if err == nil && len(endpoints) == 0 {
		err = errors.New("endpoint source returned no endpoints")
	}
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error("Failed to discover JoinService endpoints", logging.Event("join_endpoints_discovery_failed"), zap.Error(err))
		}
		return nil, fmt.Errorf("discovering JoinService endpoints: %w", err)
	}
	seen := make(map[string]bool, len(endpoints))
	unique := endpoints[:0:0]
	for _, e := range endpoints {
		if !seen[e] {
			seen[e] = true
			unique = append(unique, e)
		}
	}
	c.log.Info("Received list with JoinService endpoints", logging.Event("join_endpoints_received"), zap.Strings("endpoints", unique))
	return unique, nil
}
