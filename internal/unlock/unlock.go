// Package unlock holds what the key sources (RejoinClient, RecoveryServer)
// and the race that consumes them agree on: the candidate key and the check a
// source calls for every candidate it obtains.
package unlock

import (
	"context"
	"errors"
)

// Key is a candidate for the state disk, as a key source received it.
// It is secret: never log it, and call Zero when done.
type Key struct {
	// DiskKey is the passphrase of the disk's cluster keyslot.
	DiskKey []byte
	// MeasurementSecret is the cluster's measurement secret.
	MeasurementSecret []byte
	// MeasurementSalt is the cluster's measurement salt. Only a node with a
	// blank disk needs it (it records it in the node state).
	MeasurementSalt []byte
}

// Zero overwrites the key material in place.
func (k *Key) Zero() {
	for _, b := range [][]byte{k.DiskKey, k.MeasurementSecret, k.MeasurementSalt} {
		clear(b)
	}
}

// Check hands a candidate to the race. It returns nil when the key opened the
// disk and won: the source must stop promptly. Otherwise it returns an error
// wrapping ErrWrongKey (the key does not open the disk; the source goes on),
// ErrMalformed (the candidate is not a well-formed key; the source goes on),
// ErrDecided (another key already won; the source must stop), or the context's
// error. Check may be called from many goroutines.
type Check func(ctx context.Context, key Key) error

var (
	// ErrWrongKey: the candidate does not open the state disk.
	ErrWrongKey = errors.New("key does not open the state disk")
	// ErrMalformed: the candidate has the wrong shape (length, missing parts).
	ErrMalformed = errors.New("malformed key")
	// ErrDecided: another candidate already won the race.
	ErrDecided = errors.New("a key has already been accepted")
)

// ErrAlreadyUnlocked: the race was already decided, by a key equal to this
// candidate (the same operator push repeated, or a push of the key the
// JoinService delivered first). It wraps ErrDecided, so a source that stops
// on ErrDecided stops on it too; errors.As finds the AlreadyUnlockedError
// that names the winning source.
var ErrAlreadyUnlocked = errors.New("the node is already unlocked with this key")

// AlreadyUnlockedError is the check's answer to a candidate that equals the
// key that already won. Source is the winner's KeySource name.
type AlreadyUnlockedError struct{ Source string }

func (e *AlreadyUnlockedError) Error() string {
	return ErrAlreadyUnlocked.Error() + " (accepted from " + e.Source + ")"
}

// Is makes the error match both ErrAlreadyUnlocked and ErrDecided.
func (e *AlreadyUnlockedError) Is(target error) bool {
	return target == ErrAlreadyUnlocked || target == ErrDecided
}

// ErrRefusedDisk: the node refuses its state disk (foreign data, a header
// that failed verification, no disk, a blank disk it may not enrol); no key
// can be checked. The error's text carries the reason.
var ErrRefusedDisk = errors.New("state disk refused")

// DecidedError is the cause (context.Cause) with which the race ends the
// contexts of the sources that lost: Source's key opened the disk. It
// matches ErrDecided.
type DecidedError struct{ Source string }

func (e *DecidedError) Error() string { return ErrDecided.Error() + " (from " + e.Source + ")" }

// Is makes the error match ErrDecided.
func (e *DecidedError) Is(target error) bool { return target == ErrDecided }
