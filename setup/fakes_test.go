package setup

import (
	"errors"
	"sync"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/unlock"
)

// fakeDisks stands in for libcryptsetup where the real part needs a kernel
// with device-mapper (activation). The real LUKS2 behaviour is proven in
// diskencryption's tests on header files and in the VM suite (test/).
type fakeDisks struct {
	mu          sync.Mutex
	probe       diskencryption.Probe
	disk        *fakeDisk
	formatted   int
	deactivated int
}

func (f *fakeDisks) Probe(string) (diskencryption.Probe, error) { return f.probe, nil }

func (f *fakeDisks) Open(string) (EncryptedDisk, error) {
	if f.disk == nil {
		return nil, errors.New("not LUKS2")
	}
	return f.disk, nil
}

func (f *fakeDisks) Format(_ string, _ diskencryption.FormatOptions, passphrase []byte) (EncryptedDisk, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.formatted++
	f.disk = &fakeDisk{uuid: "0f0e0d0c-0000-4000-8000-000000000001", keys: [][]byte{append([]byte(nil), passphrase...)},
		states: []diskencryption.State{diskencryption.StateFormatting}}
	return f.disk, nil
}

func (f *fakeDisks) Deactivate(string) error { f.deactivated++; return nil }

type fakeDisk struct {
	mu        sync.Mutex
	uuid      string
	headerErr error
	keys      [][]byte
	states    []diskencryption.State
	activated []byte
	checks    int
}

func (d *fakeDisk) UUID() string        { return d.uuid }
func (d *fakeDisk) VerifyHeader() error { return d.headerErr }
func (d *fakeDisk) Close() error        { return nil }

func (d *fakeDisk) State() (diskencryption.State, error) {
	if len(d.states) == 0 {
		return diskencryption.StateNone, nil
	}
	return d.states[len(d.states)-1], nil
}

func (d *fakeDisk) SetState(s diskencryption.State) error {
	d.states = append(d.states, s)
	return nil
}

func (d *fakeDisk) CheckKey(key []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.checks++
	for _, k := range d.keys {
		if string(k) == string(key) {
			return nil
		}
	}
	return unlock.ErrWrongKey
}

func (d *fakeDisk) EnrollKey(oldKey, newKey []byte) error {
	if err := d.CheckKey(oldKey); err != nil {
		return err
	}
	d.keys = [][]byte{append([]byte(nil), newKey...)}
	return nil
}

func (d *fakeDisk) Activate(_ string, key []byte) error {
	if err := d.CheckKey(key); err != nil {
		return err
	}
	d.activated = append([]byte(nil), key...)
	return nil
}

// fakeMounter records mounts; the files live in the test's afero.MemMapFs.
type fakeMounter struct {
	mkfs   int
	mounts []bool // read-only flags of each mount
}

func (m *fakeMounter) MakeFilesystem(string) error { m.mkfs++; return nil }
func (m *fakeMounter) Mount(_, _ string, ro bool) error {
	m.mounts = append(m.mounts, ro)
	return nil
}
func (m *fakeMounter) Unmount(string) error { return nil }

// fakeMarker is the TPM's PCR 15; attestation's tests prove the real one on swtpm.
type fakeMarker struct{ marked [][]byte }

func (m *fakeMarker) MarkNodeAsBootstrapped(id []byte) error {
	m.marked = append(m.marked, append([]byte(nil), id...))
	return nil
}
func (m *fakeMarker) IsBootstrapped() (bool, error) { return len(m.marked) > 0, nil }
