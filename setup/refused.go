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
	return m.serveRefusal(ctx, uuid, reason, "State disk refused, waiting for an operator")
}

// serveRefusal runs only the RecoveryServer, refusing every push with reason,
// and repeats reminder on the console until ctx ends.
func (m *Manager) serveRefusal(ctx context.Context, uuid, reason, reminder string) error {
	sources, err := m.sources(uuid, ModeRefused)
	if err != nil {
		return fmt.Errorf("%w: %s (and no recovery listener: %v)", ErrRefused, reason, err)
	}
	stopReminder := m.remind(ctx, reminder, zap.String("reason", reason), zap.String("disk", m.cfg.StateDisk))
	defer stopReminder()
	refuse := func(unlock.Key) error {
		return fmt.Errorf("%w: %s", errRefusedPush, reason)
	}
	// refuse never accepts, so Race only ends with ctx or its sources.
	if _, raceErr := Race(ctx, m.log, refuse, sources...); errors.Is(raceErr, ErrNoSource) {
		<-ctx.Done() // the listener died; keep saying why until stopped
	}
	return fmt.Errorf("%w: %s", ErrRefused, reason)
}

// errRefusedPush is what an operator's push gets on a refused disk. It wraps
// ErrMalformed so the RecoveryServer answers InvalidArgument and keeps serving.
var errRefusedPush = fmt.Errorf("%w: the node refuses its state disk", unlock.ErrMalformed)
