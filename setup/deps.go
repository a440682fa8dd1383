package setup

import (
	"github.com/diskmapper/disk-mapper/diskencryption"
)

// DiskBackend is what the lifecycle needs from LUKS2 (diskencryption in
// production; a fake in the lifecycle's unit tests — the real part is proven
// in diskencryption's tests on header files and in the VM suite).
type DiskBackend interface {
	Probe(path string) (diskencryption.Probe, error)
	Open(path string) (EncryptedDisk, error)
	Format(path string, opts diskencryption.FormatOptions, passphrase []byte) (EncryptedDisk, error)
	Deactivate(name string) error
}

// EncryptedDisk is an opened LUKS2 state disk.
type EncryptedDisk interface {
	UUID() string
	VerifyHeader() error
	State() (diskencryption.State, error)
	SetState(diskencryption.State) error
	CheckKey(key []byte) error
	EnrollKey(oldKey, newKey []byte) error
	Activate(name string, key []byte) error
	Close() error
}

// Mounter mounts the unlocked disk and creates its file system.
type Mounter interface {
	MakeFilesystem(device string) error
	Mount(device, target string, readOnly bool) error
	Unmount(target string) error
}

// PCRMarker records in the TPM that the node has its keys.
type PCRMarker interface {
	MarkNodeAsBootstrapped(clusterID []byte) error
	IsBootstrapped() (bool, error)
}

// DiskMode tells a SourceFactory what the sources are for.
type DiskMode int

const (
	// ModeExisting: an initialized disk of ours; a key is checked against it.
	ModeExisting DiskMode = iota
	// ModeBlank: a disk formatted just now; nothing on it can check a key, so
	// only sources that authenticate the key's sender may be returned.
	ModeBlank
	// ModeRefused: the disk is refused (foreign data, a header that failed
	// verification); only the RecoveryServer runs, so the node stays
	// reachable, and every push is refused with the reason.
	ModeRefused
)

// SourceFactory builds the key sources for a disk once its UUID is known
// (empty for a refused disk without one).
type SourceFactory func(diskUUID string, mode DiskMode) ([]KeySource, error)

// luksBackend adapts the diskencryption package to DiskBackend.
type luksBackend struct{}

// LUKSBackend is the production DiskBackend.
func LUKSBackend() DiskBackend { return luksBackend{} }

func (luksBackend) Probe(path string) (diskencryption.Probe, error) {
	return diskencryption.ProbeDevice(path)
}

func (luksBackend) Open(path string) (EncryptedDisk, error) {
	return diskencryption.Open(path)
}

func (luksBackend) Format(path string, opts diskencryption.FormatOptions, passphrase []byte) (EncryptedDisk, error) {
	return diskencryption.Format(path, opts, passphrase)
}

func (luksBackend) Deactivate(name string) error { return diskencryption.Deactivate(name) }
