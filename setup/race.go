package setup

import (
	"context"
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
//     candidates get unlock.ErrDecided. The winner's own context stays live
//     so it can finish the accepting RPC cleanly (the operator sees OK); it
//     stops on its own because its check returned nil.
//  4. Race returns only after every source's Serve has returned, so no
//     goroutine outlives it; RaceResult.Stopped measures that shutdown.
//  5. A source that fails on its own (a listener error, say) is logged; the
//     others go on. If all sources end without a key, Race returns
//     ErrNoSource.
//  6. If ctx ends first, Race stops every source and returns ctx.Err().
func Race(ctx context.Context, log *zap.Logger, test KeyTest, sources ...KeySource) (RaceResult, error) {
	start := time.Now()
	cancels := make([]context.CancelFunc, len(sources))
	ctxs := make([]context.Context, len(sources))
	for i := range sources {
		ctxs[i], cancels[i] = context.WithCancel(ctx)
	}
	cancelAll := func(except int) {
		for i, c := range cancels {
			if i != except {
				c()
			}
		}
	}
	defer cancelAll(-1)

	var (
		mu      sync.Mutex // serialises test and the decision
		decided bool
		result  RaceResult
		wonAt   time.Time
	)
	checkFor := func(i int) unlock.Check {
		source := sources[i].Name()
		return func(ctx context.Context, key unlock.Key) error {
			mu.Lock()
			defer mu.Unlock()
			if decided {
				return unlock.ErrDecided
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
			cancelAll(i)
			return nil
		}
	}

	var wg sync.WaitGroup
	for i, src := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
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

func cloneKey(k unlock.Key) unlock.Key {
	return unlock.Key{
		DiskKey:           append([]byte(nil), k.DiskKey...),
		MeasurementSecret: append([]byte(nil), k.MeasurementSecret...),
		MeasurementSalt:   append([]byte(nil), k.MeasurementSalt...),
	}
}
