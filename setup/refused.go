package setup

import (
	"context"
	"errors"
	"fmt"

	"github.com/diskmapper/disk-mapper/internal/unlock"
	"go.uber.org/zap"
)

// waitRefused keeps the node reachable for an operator when its disk must not
// be touched: it logs why, keeps the RecoveryServer up (every push is refused
// with the reason) and waits until ctx ends. The disk is never written.
func (m *Manager) waitRefused(ctx context.Context, uuid, reason string) error {
	m.log.Error("Refusing state disk; waiting for an operator", zap.String("reason", reason), zap.String("disk", m.cfg.StateDisk))
	return m.serveRefusal(ctx, uuid, reason, "State disk refused, waiting for an operator", "operator")
}

// refusalSource is a KeySource that can answer pushes with the refusal
// before any key is exchanged (the RecoveryServer).
type refusalSource interface {
	RefuseWith(waitingFor, reason string)
}

// serveRefusal runs only the RecoveryServer, refusing every push with reason,
// and repeats reminder on the console until ctx ends. Once the listener is
// up it also repeats "Waiting for decryption key" with the reason and
// waitingFor, so an operator who greps for that line as the seed says finds
// this node too.
func (m *Manager) serveRefusal(ctx context.Context, uuid, reason, reminder, waitingFor string) error {
	sources, err := m.sources(uuid, ModeRefused)
	if err != nil {
		return fmt.Errorf("%w: %s (and no recovery listener: %v)", ErrRefused, reason, err)
	}
	for _, src := range sources {
		if r, ok := src.(refusalSource); ok {
			r.RefuseWith(waitingFor, reason)
		}
	}
	stopReminder := m.remind(ctx, reminder, zap.String("reason", reason), zap.String("disk", m.cfg.StateDisk))
	defer stopReminder()
	refuse := func(unlock.Key) error {
		return fmt.Errorf("%w: %s", unlock.ErrRefusedDisk, reason)
	}
	var waiting reminderOnReady
	defer waiting.stop()
	// refuse never accepts, so the race only ends with ctx or its sources.
	_, raceErr := race(ctx, m.log, refuse, func() {
		waiting.start(m.remind(ctx, waitingMsg, zap.String("uuid", uuid), zap.String("waitingFor", waitingFor),
			zap.String("reason", reason), zap.String("disk", m.cfg.StateDisk)))
	}, sources)
	if errors.Is(raceErr, ErrNoSource) {
		<-ctx.Done() // the listener died; keep saying why until stopped
	}
	return fmt.Errorf("%w: %s", ErrRefused, reason)
}
