package diskencryption

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// The format marker closes the one crash window libcryptsetup leaves:
// crypt_format first fills the keyslot area with random bytes and (with
// integrity) formats dm-integrity, and only then writes the header. A crash
// in between would leave random data and no header, which ProbeDevice must
// otherwise call foreign (never formatted, operator needed). So Format
// first writes this marker into the last 4 KiB (inside the data area, where
// no other software puts anything recognisable), and clears it once the
// header carries the "formatting" token.
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

// hasOnlyFormatMarker: the last MiB is zero except for an exact marker
// block at its end.
func hasOnlyFormatMarker(tail []byte) bool {
	end := len(tail) - formatMarkerSize
	return bytes.Equal(tail[end:], formatMarkerBlock()) && firstNonZero(tail[:end]) < 0
}
