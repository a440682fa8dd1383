package diskencryption

// The go-cryptsetup binding has no crypt_set_pbkdf_type and no
// crypt_keyslot_destroy. Without the first, a keyslot added after crypt_load
// gets libcryptsetup's default KDF (Argon2id, benchmarked to 2 s and up to
// 1 GiB), which a small guest cannot even open. These few calls use their
// own crypt_device handle; key bytes are passed without copies.
// crypt_dump_json is what lets the enrolment verify that very handle.

// #cgo pkg-config: libcryptsetup
// #include <libcryptsetup.h>
// #include <stdlib.h>
//
// static int dm_set_pbkdf2(struct crypt_device *cd, uint32_t iterations) {
// 	struct crypt_pbkdf_type pbkdf = {
// 		.type = CRYPT_KDF_PBKDF2,
// 		.hash = "sha256",
// 		.iterations = iterations,
// 		.flags = CRYPT_PBKDF_NO_BENCHMARK,
// 	};
// 	return crypt_set_pbkdf_type(cd, &pbkdf);
// }
import "C"

import (
	"fmt"
	"strings"
	"unsafe"

	"github.com/diskmapper/disk-mapper/internal/unlock"
)

// enrollKeyLocked adds newKey (authorised by oldKey) as a new PBKDF2 keyslot
// and then destroys every other keyslot. Adding first means that a crash in
// between leaves both keys working, never none. libMu must be held.
//
// The header that receives newKey is the one verify accepted: verify runs
// on this handle's own dump, after its crypt_load, and every later call
// writes this handle's in-memory metadata (libcryptsetup never re-reads the
// JSON area before writing; it aborts if the on-disk seqid moved since the
// load). written is this handle's JSON after its last successful write, ""
// if it wrote nothing.
func enrollKeyLocked(path string, verify func(uuid, dump string) error, oldKey, newKey []byte) (written string, err error) {
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	var cd *C.struct_crypt_device
	if r := C.crypt_init(&cd, cPath); r < 0 {
		return "", fmt.Errorf("crypt_init %s: errno %d", path, -r)
	}
	defer C.crypt_free(cd)
	cType := C.CString(C.CRYPT_LUKS2)
	defer C.free(unsafe.Pointer(cType))
	if r := C.crypt_load(cd, cType, nil); r < 0 {
		return "", fmt.Errorf("crypt_load %s: errno %d", path, -r)
	}
	dump, err := dumpJSONLocked(cd)
	if err != nil {
		return "", err
	}
	if err := verify(strings.ToLower(C.GoString(C.crypt_get_uuid(cd))), dump); err != nil {
		return "", err
	}
	if r := C.dm_set_pbkdf2(cd, kdfIterations); r < 0 {
		return "", fmt.Errorf("crypt_set_pbkdf_type: errno %d", -r)
	}
	slot := C.crypt_keyslot_add_by_passphrase(cd, C.CRYPT_ANY_SLOT,
		bytePtr(oldKey), C.size_t(len(oldKey)), bytePtr(newKey), C.size_t(len(newKey)))
	if slot == errnoEPERM {
		return "", fmt.Errorf("adding keyslot: old key: %w", unlock.ErrWrongKey)
	}
	if slot < 0 {
		return "", fmt.Errorf("adding keyslot: errno %d", -slot)
	}
	// From here on the disk holds newKey: report what was written even if
	// a later step fails.
	defer func() {
		if dump, derr := dumpJSONLocked(cd); derr == nil {
			written = dump
		} else if err == nil {
			err = derr
		}
	}()
	maxSlots := C.crypt_keyslot_max(cType)
	for i := C.int(0); i < maxSlots; i++ {
		if i == slot {
			continue
		}
		switch C.crypt_keyslot_status(cd, i) {
		case C.CRYPT_SLOT_INACTIVE, C.CRYPT_SLOT_INVALID:
			continue
		}
		if r := C.crypt_keyslot_destroy(cd, i); r < 0 {
			return "", fmt.Errorf("destroying keyslot %d (new key is in keyslot %d): errno %d", i, slot, -r)
		}
	}
	return "", nil
}

// dumpJSONLocked is the JSON metadata cd holds in memory (crypt_dump_json
// does not read the disk). The string stays owned by cd, so it is copied.
func dumpJSONLocked(cd *C.struct_crypt_device) (string, error) {
	var cJSON *C.char
	if r := C.crypt_dump_json(cd, &cJSON, 0); r < 0 || cJSON == nil {
		return "", fmt.Errorf("crypt_dump_json: errno %d", -r)
	}
	return C.GoString(cJSON), nil
}

// bytePtr passes a Go byte slice to C without copying (cgo allows Go memory
// without Go pointers for the duration of the call).
func bytePtr(b []byte) *C.char {
	if len(b) == 0 {
		return nil
	}
	return (*C.char)(unsafe.Pointer(&b[0]))
}
