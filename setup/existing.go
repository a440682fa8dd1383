package setup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"go.uber.org/zap"
)

// prepareExisting unlocks an initialized disk of ours: verify the header,
// race the sources for a key that opens it, map it, read the node state and
// mark PCR 15.
func (m *Manager) prepareExisting(ctx context.Context) (Summary, error) {
	disk, err := m.disks.Open(m.cfg.StateDisk)
	if err != nil {
		return Summary{}, fmt.Errorf("opening state disk: %w", err)
	}
	defer disk.Close()
	uuid := disk.UUID()
	m.log.Info("Preparing existing state disk", logging.Event("preparing_existing_disk"), zap.String("uuid", uuid))

	if err := disk.VerifyHeader(); err != nil {
		return Summary{}, m.waitRefused(ctx, uuid, "LUKS2 header failed verification: "+err.Error())
	}

	test := func(k unlock.Key) error {
		if len(k.DiskKey) == 0 || len(k.MeasurementSecret) != masterkey.SecretSize {
			return fmt.Errorf("%w: need a disk key and a %d-byte measurement secret", unlock.ErrMalformed, masterkey.SecretSize)
		}
		return disk.CheckKey(k.DiskKey)
	}
	res, err := m.obtainKey(ctx, uuid, ModeExisting, test)
	if err != nil {
		return Summary{}, err
	}
	defer res.Key.Zero()

	if err := disk.Activate(m.cfg.MappingName, res.Key.DiskKey); err != nil {
		return Summary{}, fmt.Errorf("mapping state disk: %w", err)
	}
	m.log.Info("State disk unlocked", logging.Event("disk_unlocked"), zap.String("device", m.cfg.MappedDevice))

	state, err := m.readState()
	if err != nil {
		return Summary{}, err
	}
	if err := m.mark(res.Key.MeasurementSecret, state.MeasurementSalt); err != nil {
		return Summary{}, err
	}
	if err := m.handOver(res.Key.DiskKey); err != nil {
		return Summary{}, err
	}
	return Summary{UUID: uuid, Race: res}, nil
}

// readState mounts the mapped disk read-only just long enough to read the
// node state.
func (m *Manager) readState() (NodeState, error) {
	if err := m.fs.MkdirAll(m.cfg.MountPoint, 0o700); err != nil {
		return NodeState{}, err
	}
	if err := m.mounter.Mount(m.cfg.MappedDevice, m.cfg.MountPoint, true); err != nil {
		return NodeState{}, fmt.Errorf("mounting state disk read-only: %w", err)
	}
	state, readErr := readNodeState(m.fs, m.nodeStatePath())
	if err := m.mounter.Unmount(m.cfg.MountPoint); err != nil {
		return NodeState{}, fmt.Errorf("unmounting state disk: %w", err)
	}
	return state, readErr
}

// mark extends PCR 15 with the cluster ID. Only now: the attestation policy
// requires PCR 15 to be zero while the node asks for keys.
func (m *Manager) mark(measurementSecret, measurementSalt []byte) error {
	clusterID, err := masterkey.ClusterID(measurementSecret, measurementSalt)
	if err != nil {
		return fmt.Errorf("deriving cluster ID: %w", err)
	}
	defer clear(clusterID)
	if err := m.marker.MarkNodeAsBootstrapped(clusterID); err != nil {
		return fmt.Errorf("marking node in PCR 15: %w", err)
	}
	m.log.Info("Node marked as bootstrapped in PCR 15", logging.Event("pcr_marked"))
	return nil
}

// handOver writes the key for systemd-cryptsetup, only when configured to.
func (m *Manager) handOver(key []byte) error {
	if m.cfg.KeyHandover != nil {
		if err := m.cfg.KeyHandover(key); err != nil {
			return fmt.Errorf("key handover: %w", err)
		}
	}
	if m.cfg.KeyHandoverFile == "" {
		return nil
	}
	if err := m.fs.MkdirAll(filepath.Dir(m.cfg.KeyHandoverFile), 0o700); err != nil {
		return fmt.Errorf("writing key handover file: %w", err)
	}
	// Only ever a new regular file: O_EXCL refuses anything already there,
	// O_NOFOLLOW a symlink planted to send the key elsewhere.
	f, err := m.fs.OpenFile(m.cfg.KeyHandoverFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o400)
	if err != nil {
		return fmt.Errorf("writing key handover file: %w", err)
	}
	_, err = f.Write(key)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing key handover file: %w", err)
	}
	return nil
}
