package diskencryption

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"

	cryptsetup "github.com/martinjungblut/go-cryptsetup"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// Probe is what a read-only look at a device found.
type Probe struct {
	Kind   Kind
	UUID   string // lowercase, LUKS2 only
	State  State  // from our token (see ProbeDevice for one exception)
	Reason string // why the device is not blank, for the log
}

const (
	mib = 1 << 20
	// MinDeviceSize: a 16 MiB LUKS2 header plus room for data.
	MinDeviceSize = 32 * mib
	// headerCopySize is the size of the probe's private copy of the
	// header area: libcryptsetup refuses to load a header from a file
	// smaller than its keyslot area (ours ends at 16 MiB).
	headerCopySize = 16 * mib
	// probeReadSize is what the probe reads of the front: every byte
	// libcryptsetup reads to load a header (a secondary header sits at
	// most 4 MiB in and is at most 4 MiB long) and every signature it
	// looks for. Loading never reads keyslot contents, so the copy holds
	// zeros beyond it: half the bytes to read and copy, which is boot
	// time under TCG.
	probeReadSize = 8 * mib
)

var (
	luksMagic          = []byte("LUKS\xba\xbe")
	luksSecondaryMagic = []byte("SKUL\xba\xbe")
	// LUKS2 secondary header offsets (libcryptsetup's hdr2_offsets).
	luksSecondaryOffsets = []int{0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000}
)

// ProbeDevice inspects path without writing to it.
//
// KindBlank: the first and last MiB are zero, no LUKS header is anywhere a
// LUKS2 header can be, and libcryptsetup loads nothing. Also KindBlank, with
// a Reason: no header loads and the last 4 KiB are Format's marker (a
// format that crashed before its header was written; see marker.go for
// what else the disk may then hold).
// KindLUKS2: libcryptsetup loads a LUKS2 header; State is our token's state.
// One exception: a LUKS2 header with no keyslot and no token at all, on a
// disk that carries the format marker, is what Format leaves between
// crypt_format and its token; no key can open it, so it holds no data, and
// it is reported as StateFormatting with a Reason. Without the marker such
// a header is someone else's (anyone can make one), so it is foreign.
// KindForeign: anything else (LUKS1, a file system, a partition table,
// other data, an unloadable or doubtful LUKS2 header, a device below
// MinDeviceSize), with a Reason. Never format it.
//
// libcryptsetup may repair a LUKS2 header while loading it, so the probe
// loads a copy of the header area, never the device itself.
func ProbeDevice(path string) (Probe, error) {
	f, err := os.Open(path)
	if err != nil {
		return Probe{}, fmt.Errorf("probing %s: %w", path, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Probe{}, fmt.Errorf("probing %s: size: %w", path, err)
	}
	if size < MinDeviceSize {
		return foreign("device is %d bytes, smaller than the %d a state disk needs", size, MinDeviceSize), nil
	}
	head := make([]byte, probeReadSize)
	if _, err := f.ReadAt(head, 0); err != nil {
		return Probe{}, fmt.Errorf("probing %s: reading header area: %w", path, err)
	}
	tail := make([]byte, mib)
	if _, err := f.ReadAt(tail, size-mib); err != nil {
		return Probe{}, fmt.Errorf("probing %s: reading last MiB: %w", path, err)
	}

	if bytes.HasPrefix(head, luksMagic) && binary.BigEndian.Uint16(head[6:8]) == 1 {
		return foreign("LUKS1 header (version 1); only LUKS2 is supported"), nil
	}
	hasLUKS := bytes.HasPrefix(head, luksMagic) || hasSecondaryLUKS(head)
	marker := hasFormatMarker(tail)
	loaded, loadErr := probeHeaderCopy(head, marker)
	if loadErr == nil {
		return loaded, nil
	}
	if marker {
		if sig := knownSignature(head, tail); sig != "" {
			return foreign("format marker at the end, but a %s at the front: not a disk-mapper format", sig), nil
		}
		return Probe{Kind: KindBlank, Reason: "an interrupted disk-mapper format (format marker, no loadable header); nothing on it is readable"}, nil
	}
	if hasLUKS {
		return foreign("LUKS signature, but libcryptsetup cannot load the header: %v", loadErr), nil
	}
	if sig := knownSignature(head, tail); sig != "" {
		return foreign("%s", sig), nil
	}
	if off := firstNonZero(head[:mib]); off >= 0 {
		return foreign("non-zero data in the first MiB (at byte %d)", off), nil
	}
	if off := firstNonZero(tail); off >= 0 {
		return foreign("non-zero data in the last MiB (at byte %d)", size-mib+int64(off)), nil
	}
	return Probe{Kind: KindBlank}, nil
}

func foreign(format string, args ...any) Probe {
	return Probe{Kind: KindForeign, Reason: fmt.Sprintf(format, args...)}
}

func hasSecondaryLUKS(head []byte) bool {
	for _, off := range luksSecondaryOffsets {
		if bytes.HasPrefix(head[off:], luksSecondaryMagic) {
			return true
		}
	}
	return false
}

// probeHeaderCopy writes head to a temporary file and lets libcryptsetup
// load that. An error means libcryptsetup did not load a LUKS2 header.
// marker says whether the device carries the format marker.
func probeHeaderCopy(head []byte, marker bool) (Probe, error) {
	tmp, err := os.CreateTemp("", "disk-mapper-probe-*")
	if err != nil {
		return Probe{}, err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(head)
	if werr == nil {
		werr = tmp.Truncate(headerCopySize)
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return Probe{}, werr
	}

	lockLib()
	defer libMu.Unlock()
	dev, err := cryptsetup.Init(tmp.Name())
	if err != nil {
		return Probe{}, err
	}
	defer dev.Free()
	if err := dev.Load(nil); err != nil {
		return Probe{}, err
	}
	if t := dev.Type(); t != cryptsetup.CRYPT_LUKS2 {
		return foreign("%s header; only LUKS2 is supported", t), nil
	}
	d := &Device{dev: dev}
	m, err := d.metadataLocked()
	if err != nil {
		return foreign("LUKS2 header with unreadable metadata: %v", err), nil
	}
	p := Probe{Kind: KindLUKS2, UUID: strings.ToLower(dev.GetUUID())}
	_, state, err := m.stateToken()
	switch {
	case err != nil:
		return foreign("LUKS2 header with a doubtful %s token: %v", constants.LUKSTokenType, err), nil
	case state != StateNone:
		p.State = state
	case len(m.keyslots) == 0 && len(m.tokens) == 0 && marker:
		p.State = StateFormatting
		p.Reason = "LUKS2 header without keyslots or state token, and the format marker (an interrupted format); no key can open it"
	case len(m.keyslots) == 0 && len(m.tokens) == 0:
		return foreign("LUKS2 header without keyslots or %s token, and no format marker: not a disk-mapper format", constants.LUKSTokenType), nil
	default:
		p.Reason = "LUKS2 header without a " + constants.LUKSTokenType + " token"
	}
	return p, nil
}

// knownSignature names a file-system or partition-table signature.
func knownSignature(head, tail []byte) string {
	switch {
	case binary.LittleEndian.Uint16(head[1024+56:]) == 0xEF53:
		return "ext2/3/4 superblock signature"
	case bytes.Equal(head[512:520], []byte("EFI PART")), bytes.Equal(head[4096:4104], []byte("EFI PART")):
		return "GPT partition table header"
	case bytes.Equal(tail[len(tail)-512:][:8], []byte("EFI PART")), bytes.Equal(tail[len(tail)-4096:][:8], []byte("EFI PART")):
		return "backup GPT partition table header at the end of the device"
	case head[510] == 0x55 && head[511] == 0xAA:
		return "MBR/DOS boot signature (0x55AA)"
	case bytes.Equal(head[0x10040:0x10048], []byte("_BHRfS_M")):
		return "btrfs superblock signature"
	case bytes.HasPrefix(head, []byte("XFSB")):
		return "XFS superblock signature"
	}
	return ""
}

func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}
