// Package setup is the state-disk lifecycle of DESIGN.md §4: it proves a disk
// blank or verifies it as ours, obtains its key through the race of key
// sources, maps it, records the node state and marks the node in the TPM.
package setup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/spf13/afero"
	"go.uber.org/zap"
)

// Config says which disk to prepare and how.
type Config struct {
	// StateDisk is the block device (or, in tests, the file) of the state disk.
	StateDisk string
	// Integrity enables hmac(sha256) via dm-integrity for new disks.
	Integrity bool
	// MappingName is the device-mapper name; MappedDevice its path.
	MappingName, MappedDevice string
	// MountPoint is where the disk is briefly mounted to read or write the
	// node state, which lives at NodeStateFile below it.
	MountPoint, NodeStateFile string
	// KeyHandoverFile, if set, receives the disk key for systemd-cryptsetup.
	KeyHandoverFile string
	// KeyHandover, if set, is given the verified disk key after the node
	// state was read and PCR 15 marked (the socket hand-over keeps a copy
	// in memory, never in a file); the key is zeroed after it returns.
	KeyHandover func(key []byte) error
	// BlankDiskRefusal, if set, says why this node must not enrol a new
	// disk (e.g. nothing to authenticate the key's sender with): a blank or
	// never-initialized disk is then left untouched and the node waits for
	// an operator, saying why.
	BlankDiskRefusal string
	// ReminderInterval is how often a node that waits (for a disk, for an
	// operator) repeats on the console what it waits for.
	ReminderInterval time.Duration
}

// DefaultConfig is the configuration of a real node.
func DefaultConfig() Config {
	return Config{
		StateDisk:        constants.DefaultStateDisk,
		Integrity:        true,
		MappingName:      constants.MappingName,
		MappedDevice:     constants.MappedDevicePath,
		MountPoint:       constants.StateMountPoint,
		NodeStateFile:    constants.NodeStateFile,
		ReminderInterval: 30 * time.Second,
	}
}

// Manager runs the lifecycle once per boot.
type Manager struct {
	cfg     Config
	log     *zap.Logger
	disks   DiskBackend
	mounter Mounter
	fs      afero.Fs
	marker  PCRMarker
	sources SourceFactory
}

// New returns a Manager. log should be named constants.LoggerSetup.
func New(cfg Config, log *zap.Logger, disks DiskBackend, mounter Mounter, fs afero.Fs, marker PCRMarker, sources SourceFactory) *Manager {
	return &Manager{cfg: cfg, log: log, disks: disks, mounter: mounter, fs: fs, marker: marker, sources: sources}
}

// Summary is what the final log line reports.
type Summary struct {
	UUID    string
	NewDisk bool
	Race    RaceResult
	Total   time.Duration
}

// ErrRefused is returned when the node waited for an operator on a refused
// disk and the wait ended (ctx cancelled).
var ErrRefused = errors.New("state disk refused")

// Run prepares the state disk and leaves it mapped. It returns only when the
// disk is mapped, ctx ends, or a step failed; it never formats a disk that is
// not provably blank or ours and never initialized.
func (m *Manager) Run(ctx context.Context) (Summary, error) {
	start := time.Now()
	probe, err := m.waitForDisk(ctx)
	if err != nil {
		return Summary{}, err
	}
	m.warnIfMarked()

	var sum Summary
	blankOrInterrupted := probe.Kind == diskencryption.KindBlank || (probe.Kind == diskencryption.KindLUKS2 &&
		(probe.State == diskencryption.StateFormatting || probe.State == diskencryption.StateKeyed))
	switch {
	case blankOrInterrupted && m.cfg.BlankDiskRefusal != "":
		err = m.waitRefused(ctx, probe.UUID, "not enrolling a new disk: "+m.cfg.BlankDiskRefusal)
	case probe.Kind == diskencryption.KindBlank:
		sum, err = m.prepareNew(ctx, "blank disk")
	case probe.Kind == diskencryption.KindLUKS2 && probe.State == diskencryption.StateInitialized:
		sum, err = m.prepareExisting(ctx)
	case probe.Kind == diskencryption.KindLUKS2 && (probe.State == diskencryption.StateFormatting || probe.State == diskencryption.StateKeyed):
		// Never initialized: it holds no data, so the format is redone.
		m.log.Warn("State disk was never initialized, formatting it again", logging.Event("resume_format"),
			zap.String("uuid", probe.UUID), zap.String("state", string(probe.State)))
		sum, err = m.prepareNew(ctx, "interrupted format")
	default:
		reason := probe.Reason
		if reason == "" {
			reason = fmt.Sprintf("LUKS2 disk without a %s token", constants.LUKSTokenType)
		}
		err = m.waitRefused(ctx, probe.UUID, reason)
	}
	if err != nil {
		return Summary{}, err
	}
	sum.Total = time.Since(start)
	m.log.Info("State disk mapped", logging.Event("summary"),
		zap.String("uuid", sum.UUID), zap.Bool("newDisk", sum.NewDisk),
		zap.String("source", sum.Race.Source),
		zap.Int64("elapsed_ms", sum.Total.Milliseconds()),
		zap.Int64("key_wait_ms", sum.Race.Elapsed.Milliseconds()),
		zap.Int64("sources_stopped_ms", sum.Race.Stopped.Milliseconds()),
		zap.String("device", m.cfg.MappedDevice))
	return sum, nil
}

// waitForDisk probes the state disk. While it is absent the node says so and
// keeps the RecoveryServer up, refusing pushes with the reason, so an
// operator who reaches it learns why instead of finding a closed port.
func (m *Manager) waitForDisk(ctx context.Context) (diskencryption.Probe, error) {
	if _, err := os.Stat(m.cfg.StateDisk); err == nil {
		return m.probe()
	} else if !errors.Is(err, os.ErrNotExist) {
		return diskencryption.Probe{}, fmt.Errorf("state disk %s: %w", m.cfg.StateDisk, err)
	}

	waitCtx, stopWaiting := context.WithCancel(ctx)
	refused := make(chan error, 1)
	go func() { refused <- m.serveRefusal(waitCtx, "", "no state disk", "Waiting for state disk", "disk") }()
	defer func() { stopWaiting(); <-refused }()

	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return diskencryption.Probe{}, ctx.Err()
		case <-tick.C:
		}
		if _, err := os.Stat(m.cfg.StateDisk); err == nil {
			m.log.Info("State disk appeared", logging.Event("state_disk_appeared"), zap.String("disk", m.cfg.StateDisk))
			return m.probe()
		}
	}
}

func (m *Manager) probe() (diskencryption.Probe, error) {
	probe, err := m.disks.Probe(m.cfg.StateDisk)
	if err != nil {
		return diskencryption.Probe{}, fmt.Errorf("probing state disk %s: %w", m.cfg.StateDisk, err)
	}
	return probe, nil
}

// warnIfMarked says early when PCR 15 is already extended: the key service
// and operators will refuse to attest this node until it reboots.
func (m *Manager) warnIfMarked() {
	marked, err := m.marker.IsBootstrapped()
	if err != nil {
		m.log.Warn("Cannot read PCR 15", logging.Event("pcr_read_failed"), zap.Error(err))
		return
	}
	if marked {
		m.log.Warn("PCR 15 is already extended; attestation will fail until the node reboots", logging.Event("pcr_already_marked"))
	}
}

func (m *Manager) nodeStatePath() string {
	return filepath.Join(m.cfg.MountPoint, m.cfg.NodeStateFile)
}
