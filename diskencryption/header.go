package diskencryption

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// What Format writes, and therefore all that VerifyHeader accepts.
const (
	cipherSpec         = "aes-xts-plain64"
	sectorSize         = 4096
	integrityAlgorithm = "hmac(sha256)" // the kernel's name; the CLI says hmac-sha256
	xtsKeySize         = 64             // AES-256-XTS: two 256-bit keys
	hmacKeySize        = 32             // hmac(sha256) key appended to the volume key
	kdfType            = "pbkdf2"
	kdfHash            = "sha256"
	kdfIterations      = 1000 // libcryptsetup's minimum; the keys are random 256-bit secrets
	// digestIterations is what libcryptsetup writes for the volume-key
	// digest when the PBKDF has CRYPT_PBKDF_NO_BENCHMARK (its minimum).
	digestIterations = 1000
	afStripes        = 4000
	// maxSegmentOffset bounds where the data may start. We write 16 MiB;
	// a far larger offset is not ours.
	maxSegmentOffset = 256 << 20
)

// ErrHeaderRefused is wrapped by every *HeaderError.
var ErrHeaderRefused = errors.New("LUKS2 header refused by allow-list")

// HeaderError says which field of the LUKS2 JSON metadata failed the
// allow-list, what it held and what disk-mapper writes there.
type HeaderError struct {
	Field string // JSON path, e.g. segments.0.encryption
	Got   string
	Want  string
}

func (e *HeaderError) Error() string {
	return fmt.Sprintf("%v: %s is %s, want %s", ErrHeaderRefused, e.Field, e.Got, e.Want)
}

func (e *HeaderError) Unwrap() error { return ErrHeaderRefused }

func refuse(field, got, want string) error {
	return &HeaderError{Field: field, Got: got, Want: want}
}

// verifyMetadata is the allow-list of DESIGN.md §4: the header may hold only
// what Format and EnrollKey write. The JSON area of a LUKS2 header is not
// authenticated, so anything else is attacker input (e.g. a segment
// switched to cipher_null would make the node write plaintext).
func verifyMetadata(m *metadata) error {
	if err := onlyFields("", m.top, "keyslots", "tokens", "segments", "digests", "config"); err != nil {
		return err
	}
	areaStart, areaEnd, err := verifyConfig(m.config)
	if err != nil {
		return err
	}
	integrity, err := verifySegments(m.segments, areaEnd)
	if err != nil {
		return err
	}
	volumeKeySize := xtsKeySize
	if integrity {
		volumeKeySize += hmacKeySize
	}
	if err := verifyKeyslots(m.keyslots, volumeKeySize, areaStart, areaEnd); err != nil {
		return err
	}
	if err := verifyDigests(m.digests, sortedKeys(m.keyslots)); err != nil {
		return err
	}
	return verifyTokens(m)
}

// verifyConfig returns where the keyslot area starts and ends.
func verifyConfig(config map[string]json.RawMessage) (uint64, uint64, error) {
	if err := onlyFields("config", config, "json_size", "keyslots_size", "flags", "requirements"); err != nil {
		return 0, 0, err
	}
	jsonSize, err := decimalField("config", config, "json_size")
	if err != nil {
		return 0, 0, err
	}
	if jsonSize == 0 || jsonSize%4096 != 0 || jsonSize > 4<<20 {
		return 0, 0, refuse("config.json_size", strconv.FormatUint(jsonSize, 10), "a multiple of 4096 up to 4 MiB")
	}
	keyslotsSize, err := decimalField("config", config, "keyslots_size")
	if err != nil {
		return 0, 0, err
	}
	if raw, ok := config["flags"]; ok {
		var flags []string
		if err := json.Unmarshal(raw, &flags); err != nil || len(flags) != 0 {
			return 0, 0, refuse("config.flags", string(raw), "none (disk-mapper sets no persistent activation flags)")
		}
	}
	if raw, ok := config["requirements"]; ok {
		var req map[string]json.RawMessage
		if err := json.Unmarshal(raw, &req); err != nil {
			return 0, 0, refuse("config.requirements", string(raw), "an object")
		}
		if err := onlyFields("config.requirements", req, "mandatory"); err != nil {
			return 0, 0, err
		}
		var mandatory []string
		if err := json.Unmarshal(req["mandatory"], &mandatory); err != nil || len(mandatory) != 0 {
			return 0, 0, refuse("config.requirements.mandatory", string(req["mandatory"]), "none (disk-mapper knows no LUKS2 requirement flag)")
		}
	}
	start := 2 * (jsonSize + 4096) // two copies of binary header + JSON area
	return start, start + keyslotsSize, nil
}

// verifySegments checks the single data segment and reports whether it
// carries integrity.
func verifySegments(segments map[string]json.RawMessage, keyslotAreaEnd uint64) (bool, error) {
	if ids := sortedKeys(segments); len(ids) != 1 || ids[0] != "0" {
		return false, refuse("segments", fmt.Sprintf("ids %v", ids), "exactly one segment with id 0")
	}
	seg, err := object("segments.0", segments["0"], []string{"type", "offset", "size", "iv_tweak", "encryption", "sector_size"}, "integrity")
	if err != nil {
		return false, err
	}
	for field, want := range map[string]string{"type": "crypt", "encryption": cipherSpec, "size": "dynamic", "iv_tweak": "0"} {
		if err := stringIs("segments.0."+field, seg[field], want); err != nil {
			return false, err
		}
	}
	if err := numberIs("segments.0.sector_size", seg["sector_size"], sectorSize); err != nil {
		return false, err
	}
	offset, err := decimalField("segments.0", seg, "offset")
	if err != nil {
		return false, err
	}
	if offset%sectorSize != 0 || offset < keyslotAreaEnd || offset > maxSegmentOffset {
		return false, refuse("segments.0.offset", strconv.FormatUint(offset, 10),
			fmt.Sprintf("4096-aligned, after the keyslot area (%d) and at most %d", keyslotAreaEnd, maxSegmentOffset))
	}
	raw, ok := seg["integrity"]
	if !ok {
		return false, nil
	}
	integ, err := object("segments.0.integrity", raw, []string{"type", "journal_encryption", "journal_integrity"}, "key_size")
	if err != nil {
		return false, err
	}
	for field, want := range map[string]string{"type": integrityAlgorithm, "journal_encryption": "none", "journal_integrity": "none"} {
		if err := stringIs("segments.0.integrity."+field, integ[field], want); err != nil {
			return false, err
		}
	}
	if ks, ok := integ["key_size"]; ok {
		if err := numberIs("segments.0.integrity.key_size", ks, hmacKeySize); err != nil {
			return false, err
		}
	}
	return true, nil
}

func verifyKeyslots(keyslots map[string]json.RawMessage, volumeKeySize int, areaStart, areaEnd uint64) error {
	if len(keyslots) == 0 {
		return refuse("keyslots", "empty", "at least one keyslot")
	}
	for _, id := range sortedKeys(keyslots) {
		p := "keyslots." + id
		ks, err := object(p, keyslots[id], []string{"type", "key_size", "af", "area", "kdf"}, "priority")
		if err != nil {
			return err
		}
		if err := stringIs(p+".type", ks["type"], "luks2"); err != nil {
			return err
		}
		if err := numberIs(p+".key_size", ks["key_size"], volumeKeySize); err != nil {
			return err
		}
		if prio, ok := ks["priority"]; ok {
			if err := numberIs(p+".priority", prio, 1); err != nil { // 1 = normal
				return err
			}
		}
		af, err := object(p+".af", ks["af"], []string{"type", "stripes", "hash"})
		if err != nil {
			return err
		}
		if err := stringIs(p+".af.type", af["type"], "luks1"); err != nil {
			return err
		}
		if err := numberIs(p+".af.stripes", af["stripes"], afStripes); err != nil {
			return err
		}
		if err := stringIs(p+".af.hash", af["hash"], kdfHash); err != nil {
			return err
		}
		if err := verifyKeyslotArea(p+".area", ks["area"], areaStart, areaEnd); err != nil {
			return err
		}
		kdf, err := object(p+".kdf", ks["kdf"], []string{"type", "hash", "iterations", "salt"})
		if err != nil {
			// An argon2 KDF has time/memory/cpus and no hash: say what matters.
			if t := stringOf(objectField(ks["kdf"], "type")); t != kdfType {
				return refuse(p+".kdf.type", quote(t), kdfType)
			}
			return err
		}
		if err := stringIs(p+".kdf.type", kdf["type"], kdfType); err != nil {
			return err
		}
		if err := stringIs(p+".kdf.hash", kdf["hash"], kdfHash); err != nil {
			return err
		}
		// Exactly Format's count: the KDF runs on every key check with the
		// library lock held, so a larger count is a lock-out, not hardening.
		if err := numberIs(p+".kdf.iterations", kdf["iterations"], kdfIterations); err != nil {
			return err
		}
	}
	return nil
}

func verifyKeyslotArea(p string, raw json.RawMessage, areaStart, areaEnd uint64) error {
	area, err := object(p, raw, []string{"type", "offset", "size", "encryption", "key_size"})
	if err != nil {
		return err
	}
	if err := stringIs(p+".type", area["type"], "raw"); err != nil {
		return err
	}
	if err := stringIs(p+".encryption", area["encryption"], cipherSpec); err != nil {
		return err
	}
	if err := numberIs(p+".key_size", area["key_size"], xtsKeySize); err != nil {
		return err
	}
	offset, err := decimalField(p, area, "offset")
	if err != nil {
		return err
	}
	size, err := decimalField(p, area, "size")
	if err != nil {
		return err
	}
	if offset < areaStart || size == 0 || offset+size > areaEnd || offset+size < offset {
		return refuse(p, fmt.Sprintf("offset %d size %d", offset, size), fmt.Sprintf("inside the keyslot area [%d, %d)", areaStart, areaEnd))
	}
	return nil
}

// verifyDigests accepts exactly one pbkdf2/sha256 digest binding every
// keyslot to segment 0: a second digest could bind a keyslot to another
// volume key.
func verifyDigests(digests map[string]json.RawMessage, keyslotIDs []string) error {
	if ids := sortedKeys(digests); len(ids) != 1 {
		return refuse("digests", fmt.Sprintf("ids %v", ids), "exactly one digest")
	}
	id := sortedKeys(digests)[0]
	p := "digests." + id
	d, err := object(p, digests[id], []string{"type", "keyslots", "segments", "hash", "iterations", "salt", "digest"})
	if err != nil {
		return err
	}
	if err := stringIs(p+".type", d["type"], kdfType); err != nil {
		return err
	}
	if err := stringIs(p+".hash", d["hash"], kdfHash); err != nil {
		return err
	}
	// The digest runs after every keyslot decryption, right or wrong key:
	// it must cost exactly what Format's costs.
	if err := numberIs(p+".iterations", d["iterations"], digestIterations); err != nil {
		return err
	}
	var keyslots, segments []string
	if err := json.Unmarshal(d["keyslots"], &keyslots); err != nil {
		return refuse(p+".keyslots", string(d["keyslots"]), "a list of keyslot ids")
	}
	if err := json.Unmarshal(d["segments"], &segments); err != nil || !slices.Equal(segments, []string{"0"}) {
		return refuse(p+".segments", string(d["segments"]), `["0"]`)
	}
	slices.Sort(keyslots)
	if !slices.Equal(keyslots, keyslotIDs) {
		return refuse(p+".keyslots", fmt.Sprint(keyslots), fmt.Sprintf("every keyslot %v", keyslotIDs))
	}
	return nil
}

// verifyTokens accepts only our state token, at most once.
func verifyTokens(m *metadata) error {
	for _, id := range sortedKeys(m.tokens) {
		t := stringOf(objectField(m.tokens[id], "type"))
		if t != constants.LUKSTokenType {
			return refuse("tokens."+id+".type", quote(t), quote(constants.LUKSTokenType))
		}
	}
	if _, _, err := m.stateToken(); err != nil {
		return refuse("tokens", err.Error(), "one well-formed "+constants.LUKSTokenType+" token")
	}
	return nil
}

// object decodes raw as a JSON object that has all required fields and no
// field beyond required and optional.
func object(path string, raw json.RawMessage, required []string, optional ...string) (map[string]json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, refuse(path, abbreviate(string(raw)), "a JSON object")
	}
	for _, f := range required {
		if _, ok := obj[f]; !ok {
			return nil, refuse(path+"."+f, "absent", "present")
		}
	}
	return obj, onlyFields(path, obj, append(slices.Clone(required), optional...)...)
}

func onlyFields(path string, obj map[string]json.RawMessage, allowed ...string) error {
	for _, f := range sortedKeys(obj) {
		if !slices.Contains(allowed, f) {
			return refuse(strings.TrimPrefix(path+"."+f, "."), "present ("+abbreviate(string(obj[f]))+")", "absent (disk-mapper never writes it)")
		}
	}
	return nil
}

func stringIs(path string, raw json.RawMessage, want string) error {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil || s != want {
		return refuse(path, abbreviate(string(raw)), quote(want))
	}
	return nil
}

func numberIs(path string, raw json.RawMessage, want int) error {
	var n int
	if err := json.Unmarshal(raw, &n); err != nil || n != want {
		return refuse(path, abbreviate(string(raw)), strconv.Itoa(want))
	}
	return nil
}

// decimalField reads a LUKS2 "string-encoded uint64" field.
func decimalField(path string, obj map[string]json.RawMessage, field string) (uint64, error) {
	raw, ok := obj[field]
	if !ok {
		return 0, refuse(path+"."+field, "absent", "present")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			return n, nil
		}
	}
	return 0, refuse(path+"."+field, abbreviate(string(raw)), "a decimal string")
}

func objectField(raw json.RawMessage, field string) json.RawMessage {
	var obj map[string]json.RawMessage
	_ = json.Unmarshal(raw, &obj)
	return obj[field]
}

func stringOf(raw json.RawMessage) string {
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

func quote(s string) string { return strconv.Quote(s) }

// abbreviate keeps error messages readable when a field holds a large value.
func abbreviate(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
