package rejoinclient

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// errAllHeldOff: every endpoint of the round asked to retry later, either
// with a retry hint that kept it out of the round or by answering
// RESOURCE_EXHAUSTED with one. The service is up and has scheduled us; the
// caller waits for the earliest hint and nothing else.
var errAllHeldOff = errors.New("every JoinService endpoint asked to retry later")

// attemptResult is what one attempt goroutine reports back.
type attemptResult struct {
	endpoint string
	key      unlock.Key
	err      error
	took     time.Duration
	conn     *grpc.ClientConn // kept for the endpoint's next attempt, or nil
}

// round tries all endpoints in parallel with staggered starts. It returns nil
// when check accepted a ticket, errAllHeldOff when no endpoint could be tried
// or every attempt was pushed back with a retry hint, errAllFailed when every
// attempt failed otherwise, and otherwise the error that
// must end Serve (ctx's, or check's ErrDecided). All attempts have ended and
// all unused tickets are zeroed when it returns.
func (c *Client) round(ctx context.Context, endpoints []string, check unlock.Check) error {
	queue := c.schedule(endpoints)
	if len(queue) == 0 {
		return errAllHeldOff
	}

	roundCtx, cancel := context.WithCancel(ctx)
	results := make(chan attemptResult, len(queue)) // never blocks a sender
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		for {
			select {
			case r := <-results:
				r.key.Zero()
				if r.conn != nil {
					r.conn.Close()
				}
			default:
				return
			}
		}
	}()

	launch := func(endpoint string) {
		c.log.Info("Requesting rejoin ticket", logging.Event("rejoin_ticket_requested"), zap.String("endpoint", endpoint))
		conn := c.takeConn(endpoint)
		wg.Go(func() {
			start := time.Now()
			key, kept, err := c.requestTicket(roundCtx, endpoint, conn)
			results <- attemptResult{endpoint: endpoint, key: key, err: err, took: time.Since(start), conn: kept}
		})
	}

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	next, inFlight := 0, 0
	allPushedBack := true   // every failed attempt came with a retry hint
	nextStart := time.Now() // the stagger's earliest start for queue[next]
	for next < len(queue) || inFlight > 0 {
		var wake <-chan time.Time
		if next < len(queue) {
			at := nextStart
			if hint := c.notBefore[queue[next]]; hint.After(at) {
				at = hint
			}
			if wait := time.Until(at); wait <= 0 {
				launch(queue[next])
				next++
				inFlight++
				nextStart = time.Now().Add(c.stagger)
				continue
			} else {
				timer.Reset(wait)
				wake = timer.C
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case r := <-results:
			inFlight--
			if r.err == nil {
				r.err = c.offer(ctx, check, r)
				if r.err == nil || errors.Is(r.err, unlock.ErrDecided) || ctx.Err() != nil {
					return r.err
				}
			}
			if !c.attemptFailed(r) {
				allPushedBack = false
			}
			// Happy eyeballs: a failed attempt frees the next start at once.
			nextStart = time.Now()
		}
	}
	c.log.Error("Failed to rejoin on all endpoints", logging.Event("rejoin_all_endpoints_failed"),
		zap.Int("endpointCount", len(queue)), zap.Bool("allPushedBack", allPushedBack))
	if allPushedBack {
		return errAllHeldOff
	}
	return errAllFailed
}

// schedule orders this round's endpoints: shuffled (unless KeepOrder), then
// endpoints with a pending retry hint behind the others, in the order of
// their hints. Endpoints whose hint lies beyond one attempt timeout sit this
// round out, so that a long hint cannot hold a round open.
func (c *Client) schedule(endpoints []string) []string {
	now := time.Now()
	for e, t := range c.notBefore {
		if !t.After(now) {
			delete(c.notBefore, e)
		}
	}
	queue := slices.Clone(endpoints)
	if !c.cfg.KeepOrder {
		for i := len(queue) - 1; i > 0; i-- {
			j := min(int(c.rand()*float64(i+1)), i)
			queue[i], queue[j] = queue[j], queue[i]
		}
	}
	queue = slices.DeleteFunc(queue, func(e string) bool {
		held := c.notBefore[e].Sub(now) > c.attemptTimeout
		if held {
			c.log.Debug("Skipping JoinService endpoint until its retry hint", logging.Event("rejoin_endpoint_held_off"),
				zap.String("endpoint", e), zap.Time("notBefore", c.notBefore[e]))
		}
		return held
	})
	slices.SortStableFunc(queue, func(a, b string) int { return c.notBefore[a].Compare(c.notBefore[b]) })
	return queue
}

// earliestHint is how long until the first held-off endpoint may be asked.
func (c *Client) earliestHint() time.Duration {
	var first time.Time
	for _, t := range c.notBefore {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return time.Until(first)
}

// offer hands a ticket to the race and zeroes it afterwards. A rejected
// ticket comes back as an attempt error; nil means the key won.
func (c *Client) offer(ctx context.Context, check unlock.Check, r attemptResult) error {
	err := check(ctx, r.key)
	r.key.Zero()
	switch {
	case err == nil:
		c.log.Info("Rejoin ticket accepted", logging.Event("rejoin_ticket_accepted"),
			zap.String("endpoint", r.endpoint), zap.Duration("duration", r.took))
		return nil
	case errors.Is(err, unlock.ErrDecided):
		return fmt.Errorf("rejoin ticket from %s not needed: %w", r.endpoint, err)
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return fmt.Errorf("rejoin ticket rejected: %w", err)
}

// attemptFailed logs a failed attempt, records its retry hint and keeps its
// connection, if the attempt kept one. It reports whether the endpoint sent a
// usable hint (a positive delay; zero would invite an immediate retry loop).
func (c *Client) attemptFailed(r attemptResult) (hinted bool) {
	fields := []zap.Field{
		logging.Event("rejoin_endpoint_failed"),
		zap.Error(r.err),
		zap.String("endpoint", r.endpoint),
		zap.String("errorClass", classify(r.err)),
		zap.Duration("duration", r.took),
	}
	if hint, ok := retryHint(r.err); ok {
		c.notBefore[r.endpoint] = time.Now().Add(hint)
		fields = append(fields, zap.Duration("retryAfter", hint))
		hinted = hint > 0
	}
	c.keepConn(r.endpoint, r.conn)
	c.log.Warn("Failed to rejoin on endpoint", fields...)
	return hinted
}
