package setup

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"go.uber.org/zap"
)

// obtainKey starts the key sources for the disk and runs the race. The
// "Waiting for decryption key" line is what operators grep for; it is logged
// once every source has announced itself ("Starting RecoveryServer",
// "Starting RejoinClient", so the recovery listener is bound: the factory
// binds it) and repeated while the node waits.
func (m *Manager) obtainKey(ctx context.Context, uuid string, mode DiskMode, test KeyTest) (RaceResult, error) {
	sources, err := m.sources(uuid, mode)
	if err != nil {
		return RaceResult{}, fmt.Errorf("starting key sources: %w", err)
	}
	var reminder reminderOnReady
	res, err := race(ctx, m.log, test, func() {
		reminder.start(m.remind(ctx, waitingMsg, zap.String("uuid", uuid), zap.String("waitingFor", "key")))
	}, sources)
	reminder.stop()
	if err != nil {
		return RaceResult{}, fmt.Errorf("obtaining disk key: %w", err)
	}
	m.log.Info("Disk key accepted", logging.Event("key_accepted"), zap.String("source", res.Source),
		zap.Int64("duration_ms", res.Elapsed.Milliseconds()), zap.Int64("sources_stopped_ms", res.Stopped.Milliseconds()))
	return res, nil
}

// waitingMsg is the line the seed tells operators to grep for. A node logs it
// whenever it needs a key or an operator: waiting for a key (waitingFor
// "key"), and, with a reason field, on a refused disk (waitingFor
// "operator") or without a disk (waitingFor "disk").
const waitingMsg = "Waiting for decryption key"

// reminderOnReady holds the stop func of a reminder started from race's
// onReady (another goroutine); stop is safe if it never started.
type reminderOnReady struct {
	mu     sync.Mutex
	stopFn func()
}

func (r *reminderOnReady) start(stop func()) {
	r.mu.Lock()
	r.stopFn = stop
	r.mu.Unlock()
}

func (r *reminderOnReady) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopFn != nil {
		r.stopFn()
		r.stopFn = nil
	}
}

// remind logs msg now and every ReminderInterval until the returned stop is
// called, so a waiting node always says on the console what it waits for.
func (m *Manager) remind(ctx context.Context, msg string, fields ...zap.Field) (stop func()) {
	fields = append(fields, logging.Event(logging.EventFromMessage(msg)))
	m.log.Info(msg, fields...)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(m.cfg.ReminderInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				m.log.Info(msg, fields...)
			}
		}
	}()
	return func() { close(done); <-finished }
}
