package setup

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"go.uber.org/zap"
)

// KeySource is a way to obtain the disk key: the RejoinClient or the
// RecoveryServer. Serve runs until check accepts a key (it returns nil), ctx
// is cancelled (it returns ctx.Err()), or the source fails on its own. A
// source cancels its own in-flight work before it returns.
type KeySource interface {
	Name() string
	Serve(ctx context.Context, check unlock.Check) error
}

// KeyTest decides whether a candidate opens the state disk without activating
// it. It returns nil for a key that opens the disk, an error wrapping
// unlock.ErrWrongKey or unlock.ErrMalformed otherwise.
type KeyTest func(key unlock.Key) error

// RaceResult is the winning key and how the race went.
type RaceResult struct {
	// Key is a copy owned by the caller; Zero it after use.
	Key    unlock.Key
	Source string
	// Elapsed is the time from the start of the race to the accepted key.
	Elapsed time.Duration
	// Stopped is the time from the accepted key until every source had returned.
	Stopped time.Duration
}

// ErrNoSource is returned when every source ended without a key.
var ErrNoSource = errors.New("every key source stopped without a key")

// Race obtains the state disk's key from sources, which run side by side.
//
// The rules:
//  1. Every source starts at once. Each candidate it obtains goes through the
//     check it was handed; candidates are tested against the disk one at a
//     time (libcryptsetup and the decision share one lock), so at most one
//     key ever wins.
//  2. A candidate only wins if test says it opens the disk. A key that does
//     not is returned to its source as unlock.ErrWrongKey (or ErrMalformed);
//     that source goes on.
//  3. The first winning key decides the race: the context of every other
//     source is cancelled at once, which cancels their in-flight RPCs; later
//     candidates get an error wrapping unlock.ErrDecided: an
//     unlock.AlreadyUnlockedError if they equal the winning key, else one
//     that also wraps unlock.ErrWrongKey. The other sources' contexts end
//     with cause unlock.ErrDecided (context.Cause), so the RecoveryServer
//     can still answer the pushes in flight truthfully before it stops.
//     The winner's own context stays live so it can finish the accepting
//     RPC cleanly (the operator sees OK); it stops on its own because its
//     check returned nil.
//  4. Race returns only after every source's Serve has returned, so no
//     goroutine outlives it; RaceResult.Stopped measures that shutdown.
//  5. A source that fails on its own (a listener error, say) is logged; the
//     others go on. If all sources end without a key, Race returns
//     ErrNoSource.
//  6. If ctx ends first, Race stops every source and returns ctx.Err().
func Race(ctx context.Context, log *zap.Logger, test KeyTest, sources ...KeySource) (RaceResult, error) {
	return race(ctx, log, test, nil, sources)
}

// ReadySource is a KeySource that says when it has announced itself on the
// log ("Starting RecoveryServer", "Starting RejoinClient"). Its channel must
// also close if Serve returns before that.
type ReadySource interface {
	KeySource
	Ready() <-chan struct{}
}

// race is Race; onReady, if set, runs once every source is ready (a
// ReadySource's Ready closed, or its Serve returned; any other source as
// soon as its Serve was called) and before ctx ends, on its own goroutine,
// and has returned when race returns.
func race(ctx context.Context, log *zap.Logger, test KeyTest, onReady func(), sources []KeySource) (RaceResult, error) {
	start := time.Now()
	cancels := make([]context.CancelCauseFunc, len(sources))
	ctxs := make([]context.Context, len(sources))
	for i := range sources {
		ctxs[i], cancels[i] = context.WithCancelCause(ctx)
	}
	// cancelAll ends every source's context but except's; cause tells a
	// source why (unlock.ErrDecided: another key won, answer late pushes).
	cancelAll := func(except int, cause error) {
		for i, c := range cancels {
			if i != except {
				c(cause)
			}
		}
	}
	defer cancelAll(-1, context.Canceled)

	var (
		mu      sync.Mutex // serialises test and the decision
		decided bool
		result  RaceResult
		wonAt   time.Time
		// winner is the race's own copy of the winning key, to answer
		// late candidates truthfully; zeroed when Race returns, after
		// every source (and so every check) has returned.
		winner unlock.Key
	)
	defer func() { winner.Zero() }()
	checkFor := func(i int) unlock.Check {
		source := sources[i].Name()
		return func(ctx context.Context, key unlock.Key) error {
			mu.Lock()
			defer mu.Unlock()
			if decided {
				return lateCandidate(key, winner, result.Source)
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := test(key); err != nil {
				log.Warn("Key rejected", logging.Event("key_rejected"), zap.String("source", source), zap.Error(err))
				return err
			}
			decided = true
			wonAt = time.Now()
			result = RaceResult{Key: cloneKey(key), Source: source, Elapsed: wonAt.Sub(start)}
			winner = cloneKey(key)
			cancelAll(i, &unlock.DecidedError{Source: source})
			return nil
		}
	}

	var wg sync.WaitGroup
	readies := make([]<-chan struct{}, len(sources))
	returned := make([]chan struct{}, len(sources))
	for i, src := range sources {
		returned[i] = make(chan struct{})
		if rs, ok := src.(ReadySource); ok {
			readies[i] = rs.Ready()
		} else {
			// Ready as soon as its Serve is called (below).
			ch := make(chan struct{})
			close(ch)
			readies[i] = ch
		}
	}
	if onReady != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range sources {
				select {
				case <-readies[i]:
				case <-returned[i]:
				case <-ctx.Done():
					return
				}
			}
			onReady()
		}()
	}
	for i, src := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(returned[i])
			err := src.Serve(ctxs[i], checkFor(i))
			if err != nil && ctxs[i].Err() == nil {
				log.Error("Key source stopped", logging.Event("key_source_failed"), zap.String("source", src.Name()), zap.Error(err))
			}
		}()
	}
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if decided {
		result.Stopped = time.Since(wonAt)
		return result, nil
	}
	if err := ctx.Err(); err != nil {
		return RaceResult{}, err
	}
	return RaceResult{}, fmt.Errorf("%w (%d sources)", ErrNoSource, len(sources))
}

// lateCandidate answers a candidate that arrives once the race is decided:
// the same disk key and measurement secret as the winner's means the node
// is already unlocked with it (a repeated push, or the operator pushing what
// the JoinService delivered first); anything else is a key that does not
// open the disk (the operator holds another master secret), and must be
// told so. Both wrap unlock.ErrDecided, so the source stops.
func lateCandidate(key, winner unlock.Key, source string) error {
	if len(key.DiskKey) > 0 && subtle.ConstantTimeCompare(key.DiskKey, winner.DiskKey) == 1 &&
		subtle.ConstantTimeCompare(key.MeasurementSecret, winner.MeasurementSecret) == 1 {
		return &unlock.AlreadyUnlockedError{Source: source}
	}
	return fmt.Errorf("%w, and this key is not the accepted one: %w", unlock.ErrDecided, unlock.ErrWrongKey)
}

func cloneKey(k unlock.Key) unlock.Key {
	return unlock.Key{
		DiskKey:           append([]byte(nil), k.DiskKey...),
		MeasurementSecret: append([]byte(nil), k.MeasurementSecret...),
		MeasurementSalt:   append([]byte(nil), k.MeasurementSalt...),
	}
}
