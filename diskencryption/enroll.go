package diskencryption

import "fmt"

// EnrollKey replaces the disk's keys by newKey: it adds newKey in a new
// keyslot (PBKDF2-sha256, 1000 iterations, like Format), authorised by
// oldKey, then destroys every other keyslot. Crash-safe order: add first,
// destroy after. Wrong oldKey wraps unlock.ErrWrongKey.
func (d *Device) EnrollKey(oldKey, newKey []byte) error {
	if err := checkKeyShape(oldKey); err != nil {
		return fmt.Errorf("old key: %w", err)
	}
	if err := checkKeyShape(newKey); err != nil {
		return fmt.Errorf("new key: %w", err)
	}
	lockLib()
	defer libMu.Unlock()
	if d.dev == nil {
		return errClosed
	}
	if err := d.verifyHeaderLocked(); err != nil {
		return err
	}
	enrollErr := enrollKeyLocked(d.path, oldKey, newKey)
	// The header changed under our handle: reload it either way.
	if err := d.reloadLocked(); err != nil {
		return fmt.Errorf("reloading header after enrolling: %w (enroll: %v)", err, enrollErr)
	}
	return enrollErr
}

func (d *Device) reloadLocked() error {
	dev, err := loadLUKS2(d.path)
	if err != nil {
		return err
	}
	d.dev.Free()
	d.dev = dev
	return nil
}
