package setup

import (
	"context"
	"fmt"
	"time"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"go.uber.org/zap"
)

// obtainKey starts the key sources for the disk and runs the race. The
// "Waiting for decryption key" line is what operators grep for; it is logged
// once the sources exist (so the recovery listener is bound) and repeated
// while the node waits.
func (m *Manager) obtainKey(ctx context.Context, uuid string, mode DiskMode, test KeyTest) (RaceResult, error) {
	sources, err := m.sources(uuid, mode)
	if err != nil {
		return RaceResult{}, fmt.Errorf("starting key sources: %w", err)
	}
	stopReminder := m.remind(ctx, "Waiting for decryption key", zap.String("uuid", uuid))
	res, err := Race(ctx, m.log, test, sources...)
	stopReminder()
	if err != nil {
		return RaceResult{}, fmt.Errorf("obtaining disk key: %w", err)
	}
	m.log.Info("Disk key accepted", logging.Event("key_accepted"), zap.String("source", res.Source),
		zap.Int64("duration_ms", res.Elapsed.Milliseconds()), zap.Int64("sources_stopped_ms", res.Stopped.Milliseconds()))
	return res, nil
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
