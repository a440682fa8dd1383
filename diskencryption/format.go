package diskencryption

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	cryptsetup "github.com/martinjungblut/go-cryptsetup"
	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// FormatOptions configure Format.
type FormatOptions struct {
	// Integrity adds hmac(sha256) via dm-integrity (guest only). It needs a
	// 96-byte volume key and an initial wipe.
	Integrity bool
	// Progress is told how far the integrity wipe got, at most about once a
	// second (and once at the end).
	Progress func(done, total uint64)
	// Logger, if set, gets the wipe progress lines.
	Logger *zap.Logger
}

// wipeMappingPrefix names the temporary mapping of the integrity wipe.
const wipeMappingPrefix = "disk-mapper-wipe-"

// wipeBlockSize is the write size of the wipe: large enough that the wipe
// runs at the device's write speed.
const wipeBlockSize = 8 << 20

// Format writes a fresh LUKS2 header to path (aes-xts-plain64, 4096-byte
// sectors, random volume key) with one PBKDF2 keyslot opened by passphrase.
//
// Crash safety, step by step (what ProbeDevice sees after a crash). The
// disk may start out zero, or hold what an earlier attempt left (an
// integrity wipe leaves ciphertext everywhere, the last MiB included):
//  0. the format marker goes into the last 4 KiB (marker.go). An old header
//     of ours that never reached "initialized" still loads and decides
//     (formatting or keyed).
//  1. crypt_format zeroes the header areas, fills the keyslot area with
//     random bytes, formats dm-integrity (Integrity), then writes a header
//     with no keyslot and no token → before the header: no header loads,
//     the marker makes it KindBlank ("interrupted format"); after: LUKS2
//     without keyslots or token plus the marker, StateFormatting.
//  2. the state token "formatting" → StateFormatting; then the marker is
//     cleared.
//  3. the keyslot → StateFormatting.
//  4. (Integrity) activate, wipe, deactivate → StateFormatting.
//
// At no step can the disk look keyed or initialized, nor foreign, so the
// next boot formats it again. The caller moves the state on (SetState)
// after enrolling the cluster key.
//
// The returned Device pins the header it wrote (pin.go): EnrollKey, CheckKey
// and Activate refuse any other header found on the disk later.
func Format(path string, opts FormatOptions, passphrase []byte) (*Device, error) {
	if err := checkKeyShape(passphrase); err != nil {
		return nil, err
	}
	if err := setFormatMarker(path, true); err != nil {
		return nil, err
	}
	if err := formatCrash("marker"); err != nil {
		return nil, err
	}
	lockLib()
	defer libMu.Unlock()

	dev, err := cryptsetup.Init(path)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	d := &Device{path: path, dev: dev}
	ok := false
	defer func() {
		if !ok {
			d.dev.Free()
		}
	}()

	params := cryptsetup.LUKS2{
		SectorSize: sectorSize,
		PBKDFType: &cryptsetup.PbkdfType{
			Type:       cryptsetup.CRYPT_KDF_PBKDF2,
			Hash:       kdfHash,
			Iterations: kdfIterations,
			Flags:      cryptsetup.CRYPT_PBKDF_NO_BENCHMARK,
		},
	}
	volumeKeySize := xtsKeySize
	if opts.Integrity {
		params.Integrity = integrityAlgorithm
		volumeKeySize += hmacKeySize
	}
	cipher, mode, _ := strings.Cut(cipherSpec, "-")
	if err := dev.Format(params, cryptsetup.GenericParams{Cipher: cipher, CipherMode: mode, VolumeKeySize: volumeKeySize}); err != nil {
		return nil, fmt.Errorf("formatting %s as LUKS2: %w", path, err)
	}
	if err := formatCrash("header"); err != nil {
		return nil, err
	}
	tokenJSON, err := stateTokenJSON(StateFormatting)
	if err != nil {
		return nil, err
	}
	if _, err := dev.TokenJSONSet(cryptsetup.CRYPT_ANY_TOKEN, tokenJSON); err != nil {
		return nil, fmt.Errorf("writing state token: %w", err)
	}
	if err := formatCrash("token"); err != nil {
		return nil, err
	}
	// The header now says "formatting" itself. Clear the marker before
	// dm-integrity owns the end of the disk (the wipe then covers it).
	if err := setFormatMarker(path, false); err != nil {
		return nil, err
	}
	if err := formatCrash("marker cleared"); err != nil {
		return nil, err
	}
	// An empty volume key means: the one crypt_format generated.
	if err := dev.KeyslotAddByVolumeKey(cryptsetup.CRYPT_ANY_SLOT, "", keyString(passphrase)); err != nil {
		return nil, fmt.Errorf("adding keyslot: %w", err)
	}
	if err := formatCrash("keyslot"); err != nil {
		return nil, err
	}
	d.uuid = strings.ToLower(dev.GetUUID())
	if opts.Integrity {
		if err := wipeLocked(d, passphrase, opts); err != nil {
			return nil, err
		}
	}
	// Pin the header from the handle that wrote it, before anything is
	// read back from the disk the host controls.
	if err := d.pinFromHandleLocked(); err != nil {
		return nil, err
	}
	// Reload so that the volume key crypt_format kept in the handle is
	// cleared (crypt_free zeroes it) instead of living as long as d. The
	// reloaded copy is the one later calls use, so it must be the pinned one.
	if err := d.reloadLocked(); err != nil {
		return nil, err
	}
	if err := d.verifyHeaderLocked(); err != nil {
		return nil, fmt.Errorf("header right after formatting: %w", err)
	}
	ok = true
	return d, nil
}

// formatCrash lets a test stop Format after each durable step, as a power
// cut would.
var formatCrash = func(step string) error { return nil }

// wipeLocked zeroes the whole mapped device once, so that every sector has a
// valid integrity tag (reading a never-written sector would fail). Guest
// only; covered by the VM scenario "blank disk with integrity".
func wipeLocked(d *Device, passphrase []byte, opts FormatOptions) (err error) {
	name := wipeMappingPrefix + d.uuid
	// Like cryptsetup's own luksFormat wipe: no dm-integrity journal (every
	// block would be written twice; a crash mid-wipe redoes the format
	// anyway) and a private mapping nobody else should use.
	flags := cryptsetup.CRYPT_ACTIVATE_NO_JOURNAL | cryptsetup.CRYPT_ACTIVATE_PRIVATE
	if err := d.dev.ActivateByPassphrase(name, cryptsetup.CRYPT_ANY_SLOT, keyString(passphrase), flags); err != nil {
		return libError("activating "+name+" for the integrity wipe", err)
	}
	defer func() {
		if derr := deactivateLocked(name); derr != nil && err == nil {
			err = derr
		}
	}()
	mapped := "/dev/mapper/" + name
	total, err := deviceSize(mapped)
	if err != nil {
		return err
	}
	report := newWipeReporter(total, opts)
	if err := d.dev.Wipe(mapped, cryptsetup.CRYPT_WIPE_ZERO, 0, total, wipeBlockSize, 0, report.callback); err != nil {
		return fmt.Errorf("wiping %s: %w", mapped, err)
	}
	report.finish()
	return nil
}

func deviceSize(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	size, err := f.Seek(0, 2)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", path, err)
	}
	if size <= 0 {
		return 0, errors.New("size of " + path + " is zero")
	}
	return uint64(size), nil
}

// wipeReporter reports the first block at once (the console shows at once
// that the wipe runs, and even a small disk gets a mid-wipe line), then
// throttles progress to about once a second.
type wipeReporter struct {
	total uint64
	opts  FormatOptions
	start time.Time
	last  time.Time
	done  uint64
}

func newWipeReporter(total uint64, opts FormatOptions) *wipeReporter {
	now := time.Now()
	if opts.Logger != nil {
		opts.Logger.Info("Wiping state disk for integrity", logging.Event("integrity_wipe_started"), zap.Uint64("bytes", total))
	}
	return &wipeReporter{total: total, opts: opts, start: now}
}

// callback matches the binding's progress signature; returning 0 goes on.
func (w *wipeReporter) callback(_, offset uint64) int {
	w.done = offset
	if now := time.Now(); now.Sub(w.last) >= time.Second {
		w.last = now
		w.report("integrity_wipe_progress")
	}
	return 0
}

func (w *wipeReporter) finish() {
	w.done = w.total
	w.report("integrity_wipe_done")
}

func (w *wipeReporter) report(event string) {
	if w.opts.Progress != nil {
		w.opts.Progress(w.done, w.total)
	}
	if w.opts.Logger != nil {
		w.opts.Logger.Info("Wiping state disk for integrity", logging.Event(event),
			zap.Uint64("done", w.done), zap.Uint64("total", w.total),
			zap.Uint64("percent", w.done*100/w.total), zap.Duration("duration", time.Since(w.start)))
	}
}
