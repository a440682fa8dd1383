package setup

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"go.uber.org/zap"
)

// prepareNew formats a disk that is provably blank (or ours and never
// initialized) and enrols the cluster's key for it. The token records each
// step, so a crash anywhere before "initialized" is redone on the next boot.
func (m *Manager) prepareNew(ctx context.Context, why string) (Summary, error) {
	m.log.Info("Preparing new state disk", logging.Event("preparing_new_disk"), zap.String("reason", why),
		zap.Bool("integrity", m.cfg.Integrity))
	_ = m.disks.Deactivate(m.cfg.MappingName) // a leftover mapping of an interrupted run; usually absent

	tempKey := make([]byte, masterkey.SecretSize)
	if _, err := rand.Read(tempKey); err != nil {
		return Summary{}, err
	}
	defer clear(tempKey)
	disk, err := m.disks.Format(m.cfg.StateDisk, diskencryption.FormatOptions{Integrity: m.cfg.Integrity, Progress: m.wipeProgress()}, tempKey)
	if err != nil {
		return Summary{}, fmt.Errorf("formatting state disk: %w", err)
	}
	defer disk.Close()
	uuid := disk.UUID()
	m.log.Info("State disk formatted", logging.Event("disk_formatted"), zap.String("uuid", uuid))

	// Nothing on a new disk can check a key; the sources for a blank disk
	// authenticate the sender instead, and the key must have the right shape.
	test := func(k unlock.Key) error {
		for _, b := range [][]byte{k.DiskKey, k.MeasurementSecret, k.MeasurementSalt} {
			if len(b) != masterkey.SecretSize {
				return fmt.Errorf("%w: a new disk needs a %d-byte disk key, measurement secret and measurement salt", unlock.ErrMalformed, masterkey.SecretSize)
			}
		}
		return nil
	}
	res, err := m.obtainKey(ctx, uuid, ModeBlank, test)
	if err != nil {
		return Summary{}, err
	}
	defer res.Key.Zero()

	if err := disk.EnrollKey(tempKey, res.Key.DiskKey); err != nil {
		if errors.Is(err, diskencryption.ErrHeaderRefused) {
			return Summary{}, m.refuseRewrittenHeader(ctx, uuid, "enrolling the cluster key", err)
		}
		return Summary{}, fmt.Errorf("enrolling cluster key: %w", err)
	}
	if err := disk.SetState(diskencryption.StateKeyed); err != nil {
		return Summary{}, err
	}
	if err := disk.Activate(m.cfg.MappingName, res.Key.DiskKey); err != nil {
		if errors.Is(err, diskencryption.ErrHeaderRefused) {
			return Summary{}, m.refuseRewrittenHeader(ctx, uuid, "mapping the disk", err)
		}
		return Summary{}, fmt.Errorf("mapping state disk: %w", err)
	}
	if err := m.mounter.MakeFilesystem(m.cfg.MappedDevice); err != nil {
		return Summary{}, fmt.Errorf("creating file system: %w", err)
	}
	if err := m.writeState(NodeState{MeasurementSalt: res.Key.MeasurementSalt}); err != nil {
		return Summary{}, err
	}
	if err := disk.SetState(diskencryption.StateInitialized); err != nil {
		return Summary{}, err
	}
	m.log.Info("State disk initialized", logging.Event("disk_initialized"), zap.String("uuid", uuid))
	if err := m.mark(res.Key.MeasurementSecret, res.Key.MeasurementSalt); err != nil {
		return Summary{}, err
	}
	if err := m.handOver(res.Key.DiskKey); err != nil {
		return Summary{}, err
	}
	return Summary{UUID: uuid, NewDisk: true, Race: res}, nil
}

// refuseRewrittenHeader: the header is no longer the one this node formatted
// (or fails the allow-list): the host rewrote it during the key wait. That
// is attacker input like a bad header on an existing disk, so the node
// waits for an operator instead of exiting into a reformat loop the host
// could steer; the reason names the field.
func (m *Manager) refuseRewrittenHeader(ctx context.Context, uuid, step string, err error) error {
	return m.waitRefused(ctx, uuid, "LUKS2 header changed after this node formatted it, refused before "+step+": "+err.Error())
}

func (m *Manager) writeState(s NodeState) error {
	if err := m.fs.MkdirAll(m.cfg.MountPoint, 0o700); err != nil {
		return err
	}
	if err := m.mounter.Mount(m.cfg.MappedDevice, m.cfg.MountPoint, false); err != nil {
		return fmt.Errorf("mounting state disk: %w", err)
	}
	writeErr := writeNodeState(m.fs, m.nodeStatePath(), s)
	if err := m.mounter.Unmount(m.cfg.MountPoint); err != nil {
		return fmt.Errorf("unmounting state disk: %w", err)
	}
	if writeErr != nil {
		return fmt.Errorf("writing node state: %w", writeErr)
	}
	return nil
}

// wipeProgress logs the integrity wipe at most every 2 s.
func (m *Manager) wipeProgress() func(done, total uint64) {
	var last time.Time
	return func(done, total uint64) {
		if time.Since(last) < 2*time.Second && done < total {
			return
		}
		last = time.Now()
		pct := 0.0
		if total > 0 {
			pct = float64(done) * 100 / float64(total)
		}
		m.log.Info("Wiping state disk for integrity", logging.Event("wipe_progress"),
			zap.Uint64("done_bytes", done), zap.Uint64("total_bytes", total), zap.Float64("percent", pct))
	}
}
