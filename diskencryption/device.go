package diskencryption

import (
	"errors"
	"fmt"
	"strings"

	cryptsetup "github.com/martinjungblut/go-cryptsetup"
)

// Device is an opened (loaded) LUKS2 header. Its methods may be called from
// several goroutines; every libcryptsetup call is serialised by libMu.
type Device struct {
	path string
	uuid string
	dev  *cryptsetup.Device // nil once closed; guarded by libMu
	// pin is the header this Device stands for (see pin.go): set from the
	// handle that Format wrote with, or from what Open loaded, and moved on
	// only by EnrollKey's own write. Every key operation checks the handle
	// against it, so a header the host swapped in after Format (or after
	// Open) is refused even if it passes the allow-list.
	pin *headerPin
}

// errClosed is returned by methods of a closed Device.
var errClosed = errors.New("LUKS2 device is closed")

// Open loads the LUKS2 header of path. It fails if path holds no LUKS2
// header. Open does not verify the header: call VerifyHeader (CheckKey and
// Activate do so themselves).
func Open(path string) (*Device, error) {
	lockLib()
	defer libMu.Unlock()
	dev, err := loadLUKS2(path)
	if err != nil {
		return nil, err
	}
	d := &Device{path: path, uuid: strings.ToLower(dev.GetUUID()), dev: dev}
	// Unparsable metadata leaves no pin; verification then fails closed
	// (and names the parse error first).
	if m, err := d.metadataLocked(); err == nil {
		d.pin, _ = newPin(d.uuid, m)
	}
	return d, nil
}

// loadLUKS2 must be called with libMu held.
func loadLUKS2(path string) (*cryptsetup.Device, error) {
	dev, err := cryptsetup.Init(path)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if err := dev.Load(nil); err != nil {
		dev.Free()
		return nil, fmt.Errorf("%s holds no LUKS header libcryptsetup can load: %w", path, err)
	}
	if t := dev.Type(); t != cryptsetup.CRYPT_LUKS2 {
		dev.Free()
		return nil, fmt.Errorf("%s holds a %s header, want LUKS2", path, t)
	}
	return dev, nil
}

// Close frees the header. Further calls fail.
func (d *Device) Close() error {
	lockLib()
	defer libMu.Unlock()
	if d.dev != nil {
		d.dev.Free()
		d.dev = nil
	}
	return nil
}

// Path is the device (or file) the header was loaded from.
func (d *Device) Path() string { return d.path }

// UUID is the header's UUID in lower case (the form keys are derived from).
func (d *Device) UUID() string { return d.uuid }

// VerifyHeader checks the header against the allow-list (see header.go)
// and against the header this Device was opened or formatted with (pin.go).
// A *HeaderError says which field is wrong.
func (d *Device) VerifyHeader() error {
	lockLib()
	defer libMu.Unlock()
	return d.verifyHeaderLocked()
}

func (d *Device) verifyHeaderLocked() error {
	m, err := d.metadataLocked()
	if err != nil {
		return err
	}
	return d.verifyPinned(strings.ToLower(d.dev.GetUUID()), m)
}

// verifyPinned runs the allow-list and then the pin on metadata m of a
// header with uuid, wherever it was loaded.
func (d *Device) verifyPinned(uuid string, m *metadata) error {
	if err := verifyMetadata(m); err != nil {
		return err
	}
	if d.pin == nil {
		return errors.New("LUKS2 header identity was never pinned; refusing to use it")
	}
	return d.pin.check(uuid, m)
}

func (d *Device) metadataLocked() (*metadata, error) {
	if d.dev == nil {
		return nil, errClosed
	}
	dump, err := d.dev.DumpJSON()
	if err != nil {
		return nil, fmt.Errorf("dumping LUKS2 metadata: %w", err)
	}
	return parseMetadata(dump)
}

// State reads our state token; StateNone if there is none.
func (d *Device) State() (State, error) {
	lockLib()
	defer libMu.Unlock()
	m, err := d.metadataLocked()
	if err != nil {
		return StateNone, err
	}
	_, s, err := m.stateToken()
	return s, err
}

// SetState creates or replaces our state token (one header write).
func (d *Device) SetState(s State) error {
	tokenJSON, err := stateTokenJSON(s)
	if err != nil {
		return err
	}
	lockLib()
	defer libMu.Unlock()
	return d.setStateLocked(tokenJSON)
}

func (d *Device) setStateLocked(tokenJSON string) error {
	m, err := d.metadataLocked()
	if err != nil {
		return err
	}
	id, _, err := m.stateToken()
	if err != nil {
		return err
	}
	if id < 0 {
		id = cryptsetup.CRYPT_ANY_TOKEN
	}
	if _, err := d.dev.TokenJSONSet(id, tokenJSON); err != nil {
		return fmt.Errorf("writing state token: %w", err)
	}
	return nil
}

// CheckKey tells whether key opens a keyslot, without activating anything.
// The header is verified first: no key is tried on a header outside the
// allow-list. A wrong key wraps unlock.ErrWrongKey; an empty or oversized one
// unlock.ErrMalformed.
func (d *Device) CheckKey(key []byte) error {
	if err := checkKeyShape(key); err != nil {
		return err
	}
	lockLib()
	defer libMu.Unlock()
	if err := d.verifyHeaderLocked(); err != nil {
		return err
	}
	return d.checkKeyLocked(key)
}

// checkKeyLocked tries key without the allow-list (the benchmark uses it
// on an Argon2id header, which the allow-list refuses).
func (d *Device) checkKeyLocked(key []byte) error {
	if d.dev == nil {
		return errClosed
	}
	// An empty name means NULL: check the passphrase only.
	return libError("checking key", d.dev.ActivateByPassphrase("", cryptsetup.CRYPT_ANY_SLOT, keyString(key), 0))
}

// Activate maps the disk as /dev/mapper/<name> with key, after verifying the
// header. Needs device-mapper: it only works inside the guest (VM scenarios
// "existing disk" and "blank disk" of the test suite cover it).
func (d *Device) Activate(name string, key []byte) error {
	if name == "" {
		return errors.New("activating: empty mapping name")
	}
	if err := checkKeyShape(key); err != nil {
		return err
	}
	lockLib()
	defer libMu.Unlock()
	if err := d.verifyHeaderLocked(); err != nil {
		return err
	}
	return libError("activating "+name, d.dev.ActivateByPassphrase(name, cryptsetup.CRYPT_ANY_SLOT, keyString(key), 0))
}

// Deactivate removes the mapping /dev/mapper/<name>. Guest only.
func Deactivate(name string) error {
	lockLib()
	defer libMu.Unlock()
	return deactivateLocked(name)
}

func deactivateLocked(name string) error {
	dev, err := cryptsetup.InitByName(name)
	if err != nil {
		return fmt.Errorf("finding mapping %s: %w", name, err)
	}
	defer dev.Free()
	if err := dev.Deactivate(name); err != nil {
		return fmt.Errorf("deactivating %s: %w", name, err)
	}
	return nil
}
