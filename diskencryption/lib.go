// Package diskencryption is everything disk-mapper does with LUKS2: probing
// a device, formatting it, checking and enrolling keys, recording lifecycle
// state in a LUKS2 token, verifying the header against an allow-list, and
// mapping it. All of it goes through libcryptsetup (go-cryptsetup, plus a
// few calls that binding lacks, see keyslots_cgo.go).
package diskencryption

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	cryptsetup "github.com/martinjungblut/go-cryptsetup"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/unlock"
)

// libMu serialises every libcryptsetup call of the package: libcryptsetup
// is not thread-safe, and the binding keeps its log and wipe-progress
// callbacks in package globals.
var libMu sync.Mutex

// MaxKeySize bounds a passphrase. Our keys are 32 bytes; anything much larger
// is not a key of ours and would only make the KDF do more work.
const MaxKeySize = 512

// errnoEPERM is what libcryptsetup returns when no keyslot accepts a
// passphrase.
const errnoEPERM = -1

// silenceLibrary is installed before the first libcryptsetup call so that the
// library never prints to stdout/stderr (the serial console carries the JSON
// log). RouteLibraryLog replaces it.
var silenceLibrary sync.Once

func lockLib() {
	libMu.Lock()
	silenceLibrary.Do(func() { cryptsetup.SetLogCallback(func(int, string) {}) })
}

// RouteLibraryLog sends libcryptsetup's own messages to log at debug level
// (and, when log has debug enabled, turns on libcryptsetup's debug
// messages). libcryptsetup never logs passphrases or volume keys. nil
// silences the library again.
func RouteLibraryLog(log *zap.Logger) {
	lockLib()
	defer libMu.Unlock()
	if log == nil || !log.Core().Enabled(zapcore.DebugLevel) {
		cryptsetup.SetDebugLevel(cryptsetup.CRYPT_DEBUG_NONE)
		cryptsetup.SetLogCallback(func(int, string) {})
		return
	}
	cryptsetup.SetDebugLevel(cryptsetup.CRYPT_DEBUG_ALL)
	cryptsetup.SetLogCallback(func(level int, msg string) {
		log.Debug("libcryptsetup", logging.Event("libcryptsetup"),
			zap.Int("cryptsetupLevel", level), zap.String("message", msg))
	})
}

// checkKeyShape rejects keys that cannot be ours before any KDF runs.
func checkKeyShape(key []byte) error {
	if len(key) == 0 {
		return fmt.Errorf("%w: empty key", unlock.ErrMalformed)
	}
	if len(key) > MaxKeySize {
		return fmt.Errorf("%w: key is %d bytes, at most %d allowed", unlock.ErrMalformed, len(key), MaxKeySize)
	}
	return nil
}

// keyString views key as a string without copying it, so that no extra Go
// copy of the secret is left for the garbage collector. The binding copies
// it into C memory (and frees it without clearing; a known limit).
// The caller must not modify key while the string is in use.
func keyString(key []byte) string {
	if len(key) == 0 {
		return ""
	}
	return unsafe.String(&key[0], len(key))
}

// libError turns a libcryptsetup error from a key operation into ours: EPERM
// means no keyslot accepted the key.
func libError(op string, err error) error {
	if err == nil {
		return nil
	}
	var cerr *cryptsetup.Error
	if errors.As(err, &cerr) && cerr.Code() == errnoEPERM {
		return fmt.Errorf("%s: %w", op, unlock.ErrWrongKey)
	}
	return fmt.Errorf("%s: %w", op, err)
}
