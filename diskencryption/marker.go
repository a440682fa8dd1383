package diskencryption

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// The format marker closes the crash windows libcryptsetup leaves:
// crypt_format first fills the keyslot area with random bytes and (with
// integrity) formats dm-integrity, and only then writes the header, and
// that header has no keyslot and no token of ours until Format adds them.
// A crash in between would leave random data and no header, or a header
// anyone could have made, which ProbeDevice must otherwise call foreign
// (never formatted, operator needed). So Format first writes this marker
// into the last 4 KiB (inside the data area, where no other software puts
// anything recognisable), and clears it once the header carries the
// "formatting" token.
const formatMarkerSize = 4096

var formatMarkerText = []byte("disk-mapper: LUKS2 format in progress; nothing on this disk is readable\n")

func formatMarkerBlock() []byte {
	b := make([]byte, formatMarkerSize)
	copy(b, formatMarkerText)
	return b
}

// setFormatMarker writes (or, with set false, zeroes) the marker block and
// syncs it to the device.
func setFormatMarker(path string, set bool) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("format marker: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("format marker: size of %s: %w", path, err)
	}
	if size < MinDeviceSize {
		return fmt.Errorf("format marker: %s is %d bytes, smaller than %d", path, size, MinDeviceSize)
	}
	block := make([]byte, formatMarkerSize)
	if set {
		block = formatMarkerBlock()
	}
	if _, err := f.WriteAt(block, size-formatMarkerSize); err != nil {
		return fmt.Errorf("format marker: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("format marker: sync: %w", err)
	}
	return nil
}

// hasFormatMarker: the last 4 KiB are exactly the marker block. Nothing
// else of the disk is looked at, on purpose: a re-format of a disk of ours
// that never reached "initialized" starts from whatever the earlier attempt
// left, and after an integrity wipe that is ciphertext everywhere, the last
// MiB included. ProbeDevice consults the marker only where it cannot hurt:
//
//   - only when no LUKS2 header loads, or when the header that loads has
//     neither keyslot nor token (no key can open it). A header that loads
//     with a keyslot or our token always decides by itself, so while any
//     header copy of an initialized disk survives, the marker changes
//     nothing.
//   - never when a file-system or partition-table signature is at the front
//     (a foreign disk whose last block happens to hold our marker text).
//
// An initialized disk of ours never carries the marker: Format clears it
// (synced) before the first keyslot exists, so before any data can be
// written, and afterwards the last 4 KiB are ciphertext. Making one look
// reformattable therefore takes destroying both header copies, after which
// the volume key, and with it every byte of data, is gone anyway; the host
// could as well zero the disk. The new format then gets its key only
// through the authenticated blank-disk path.
func hasFormatMarker(tail []byte) bool {
	return len(tail) >= formatMarkerSize && bytes.Equal(tail[len(tail)-formatMarkerSize:], formatMarkerBlock())
}
