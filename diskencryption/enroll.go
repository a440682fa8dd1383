package diskencryption

import (
	"fmt"
	"strings"
)

// EnrollKey replaces the disk's keys by newKey: it adds newKey in a new
// keyslot (PBKDF2-sha256, 1000 iterations, like Format), authorised by
// oldKey, then destroys every other keyslot. Crash-safe order: add first,
// destroy after. Wrong oldKey wraps unlock.ErrWrongKey.
//
// The node may wait for newKey for hours after Format, and the host can
// rewrite the header in that time. So the header that receives newKey is
// loaded afresh, verified against the allow-list and the pin (the header
// Format wrote) on the handle that then writes it; a *HeaderError names the
// first field that changed, and nothing is enrolled.
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
	verify := func(uuid, dump string) error {
		m, err := parseMetadata(dump)
		if err != nil {
			return err
		}
		if err := d.verifyPinned(uuid, m); err != nil {
			return err
		}
		afterEnrollVerify()
		return nil
	}
	written, enrollErr := enrollKeyLocked(d.path, verify, oldKey, newKey)
	if written != "" {
		// What this node wrote is the header from now on.
		pinErr := d.repinLocked(written)
		if enrollErr == nil {
			enrollErr = pinErr
		}
	}
	// The header changed under our handle (or the host changed it): reload
	// it either way, and hold the reloaded copy to the pin.
	if err := d.reloadLocked(); err != nil {
		return fmt.Errorf("reloading header after enrolling: %w (enroll: %v)", err, enrollErr)
	}
	if enrollErr != nil {
		return enrollErr
	}
	if err := d.verifyHeaderLocked(); err != nil {
		return fmt.Errorf("header after enrolling: %w", err)
	}
	return nil
}

// afterEnrollVerify lets a test play the host between the verification of
// the enrolment handle and its keyslot write.
var afterEnrollVerify = func() {}

func (d *Device) repinLocked(dump string) error {
	m, err := parseMetadata(dump)
	if err != nil {
		return fmt.Errorf("pinning the enrolled header: %w", err)
	}
	pin, err := newPin(d.uuid, m)
	if err != nil {
		return err
	}
	d.pin = pin
	return nil
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

// pinFromHandleLocked pins what d.dev holds in memory: the header this
// process itself wrote through that handle.
func (d *Device) pinFromHandleLocked() error {
	m, err := d.metadataLocked()
	if err != nil {
		return err
	}
	pin, err := newPin(strings.ToLower(d.dev.GetUUID()), m)
	if err != nil {
		return err
	}
	d.pin = pin
	return nil
}
