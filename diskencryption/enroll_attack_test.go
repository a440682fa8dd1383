package diskencryption

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/testutil"
)

// headerRewrite is what the host does to the disk file while the node waits
// for its key; tmpKey is the key Format was given (the host does not know
// it; some rewrites keep it working to show that only the pin stops them).
type headerRewrite struct {
	name      string
	rewrite   func(t *testing.T, path string, d *Device)
	wantField string
}

func enrolmentRewrites() []headerRewrite {
	return []headerRewrite{
		{"segment cipher_null", func(t *testing.T, path string, _ *Device) {
			testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) { seg(m)["encryption"] = "cipher_null-ecb" })
		}, "segments.0.encryption"},
		{"keyslot area cipher_null", func(t *testing.T, path string, _ *Device) {
			testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) {
				slot(m)["area"].(map[string]any)["encryption"] = "cipher_null-ecb"
			})
		}, "keyslots.0.area.encryption"},
		{"keyslot area moved (allow-list compliant, still opens)", moveKeyslotArea, "keyslots.0.area.offset"},
		{"digest swapped for another header's", swapDigest, "digests.0.digest"},
		{"host's own header with the same UUID", hostHeaderSameUUID, "digests.0.digest"},
		{"keyslot PBKDF2 iterations 2^31", func(t *testing.T, path string, _ *Device) {
			testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) {
				slot(m)["kdf"].(map[string]any)["iterations"] = 1 << 31
			})
		}, "keyslots.0.kdf.iterations"},
	}
}

// Item 1 of issue 9: the header is rewritten on disk between Format and
// EnrollKey. EnrollKey must refuse, name the field, and enrol nothing.
func TestEnrollKeyRefusesHeaderRewrittenDuringKeyWait(t *testing.T) {
	for _, tc := range enrolmentRewrites() {
		t.Run(tc.name, func(t *testing.T) {
			d, tmpKey := formatOurs(t)
			tc.rewrite(t, d.Path(), d)
			if strings.Contains(tc.name, "still opens") && !keyOpens(t, d.Path(), tmpKey) {
				t.Fatal("the rewritten header no longer opens with Format's key: the case proves nothing")
			}
			slotsBefore := keyslotIDsOnDisk(t, d.Path())
			clusterKey := randomKey(t)

			err := d.EnrollKey(tmpKey, clusterKey)
			var herr *HeaderError
			if !errors.As(err, &herr) || herr.Field != tc.wantField || !strings.Contains(err.Error(), tc.wantField) {
				t.Fatalf("EnrollKey = %v, want a *HeaderError naming %s", err, tc.wantField)
			}
			t.Log(err)
			if got := keyslotIDsOnDisk(t, d.Path()); !slices.Equal(got, slotsBefore) {
				t.Fatalf("keyslots on disk after the refused EnrollKey = %v, before %v", got, slotsBefore)
			}
			// A 2^31-iteration keyslot would take hours to try; the
			// unchanged keyslot set already shows nothing was added.
			if !strings.Contains(tc.name, "iterations") && keyOpens(t, d.Path(), clusterKey) {
				t.Fatal("the cluster key opens the disk after a refused enrolment")
			}
		})
	}
}

// The host rewrites the header in the instant between the enrolment
// handle's verification and its keyslot write (the window libcryptsetup's
// own re-reads leave). Whatever the host writes, the header on disk after
// enrolment is never the host's: either the enrolment fails, or what it
// wrote is the verified copy plus the new keyslot.
func TestEnrollKeyWritesOnlyTheVerifiedHeader(t *testing.T) {
	for name, bumpSeqID := range map[string]bool{"same seqid": false, "seqid bumped": true} {
		t.Run(name, func(t *testing.T) {
			d, tmpKey := formatOurs(t)
			afterEnrollVerify = func() {
				testutil.RewriteLUKS2HeaderJSON(t, d.Path(), func(m map[string]any) { seg(m)["encryption"] = "cipher_null-ecb" })
				if bumpSeqID {
					bumpLUKS2SeqID(t, d.Path())
				}
			}
			defer func() { afterEnrollVerify = func() {} }()
			clusterKey := randomKey(t)
			err := d.EnrollKey(tmpKey, clusterKey)
			enc := seg(dumpJSON(t, d.Path()))["encryption"]
			t.Logf("EnrollKey = %v; segment on disk: %v", err, enc)
			if err == nil && enc != cipherSpec {
				t.Fatalf("enrolment succeeded and left the host's segment %v on disk", enc)
			}
			if err != nil && keyOpens(t, d.Path(), clusterKey) {
				t.Fatal("enrolment failed, yet the cluster key opens the header on disk")
			}
			if err == nil {
				if cerr := d.CheckKey(clusterKey); cerr != nil {
					t.Fatalf("CheckKey after enrolment: %v", cerr)
				}
			}
		})
	}
}

// After enrolment the handle is reloaded from disk, and a header the host
// put there in between must be refused by CheckKey and Activate even when
// it passes the allow-list (moved keyslot area, still opening).
func TestKeyUseRefusesHeaderSwappedAfterEnrolment(t *testing.T) {
	d, tmpKey := formatOurs(t)
	clusterKey := randomKey(t)
	if err := d.EnrollKey(tmpKey, clusterKey); err != nil {
		t.Fatal(err)
	}
	moveKeyslotArea(t, d.Path(), d)
	if !keyOpens(t, d.Path(), clusterKey) {
		t.Fatal("the rewritten header no longer opens: the case proves nothing")
	}
	lockLib()
	err := d.reloadLocked() // what EnrollKey's reload, or any later reload, reads
	libMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	slotID := keyslotIDsOnDisk(t, d.Path())[0]
	want := "keyslots." + slotID + ".area.offset"
	var herr *HeaderError
	if err := d.CheckKey(clusterKey); !errors.As(err, &herr) || herr.Field != want {
		t.Fatalf("CheckKey = %v, want a *HeaderError naming %s", err, want)
	}
	if err := d.Activate("disk-mapper-test-never", clusterKey); !errors.As(err, &herr) || herr.Field != want {
		t.Fatalf("Activate = %v, want a *HeaderError naming %s", err, want)
	}
}

// moveKeyslotArea moves the first keyslot's area to the next free spot of
// the keyslot area and copies its bytes along: a header that passes the
// allow-list and opens with the same key, but is not the one Format wrote.
func moveKeyslotArea(t *testing.T, path string, _ *Device) {
	t.Helper()
	m := dumpJSON(t, path)
	area := firstSlot(m)["area"].(map[string]any)
	off, _ := strconv.ParseInt(area["offset"].(string), 10, 64)
	size, _ := strconv.ParseInt(area["size"].(string), 10, 64)
	newOff := off + size + 4096*16
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, size)
	if _, err := f.ReadAt(buf, off); err == nil {
		_, err = f.WriteAt(buf, newOff)
	}
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) {
		firstSlot(m)["area"].(map[string]any)["offset"] = strconv.FormatInt(newOff, 10)
	})
}

// swapDigest puts the digest of another header of ours (another volume key)
// into this one.
func swapDigest(t *testing.T, path string, _ *Device) {
	t.Helper()
	other, _ := formatOurs(t)
	digest := dumpJSON(t, other.Path())["digests"].(map[string]any)["0"].(map[string]any)["digest"]
	testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) {
		m["digests"].(map[string]any)["0"].(map[string]any)["digest"] = digest
	})
}

// hostHeaderSameUUID replaces the whole header by one the host formatted
// with the cryptsetup CLI: same UUID, parameters like ours, our token, the
// host's volume key and passphrase.
func hostHeaderSameUUID(t *testing.T, path string, d *Device) {
	t.Helper()
	host := cliFormat(t, randomKey(t), "--uuid", d.UUID())
	tok := filepath.Join(t.TempDir(), "token.json")
	if err := os.WriteFile(tok, []byte(`{"type":"disk-mapper-state","keyslots":[],"state":"formatting"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.CryptsetupCLI(t, nil, "token", "import", "--json-file", tok, host)
	hdr, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WriteAt(t, path, 0, hdr[:headerCopySize])
}

// bumpLUKS2SeqID raises the sequence id of both header copies and fixes
// their checksums, as a host that wants its header to look newer would.
func bumpLUKS2SeqID(t *testing.T, path string) {
	t.Helper()
	hdrSize := testutil.LUKS2HeaderSize(t, path)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range []int64{0, hdrSize} {
		hdr := make([]byte, hdrSize)
		if _, err := f.ReadAt(hdr, off); err != nil {
			t.Fatal(err)
		}
		binary.BigEndian.PutUint64(hdr[16:24], binary.BigEndian.Uint64(hdr[16:24])+7)
		const csumOff, csumLen = 448, 64
		clear(hdr[csumOff : csumOff+csumLen])
		sum := sha256.Sum256(hdr)
		copy(hdr[csumOff:], sum[:])
		if _, err := f.WriteAt(hdr, off); err != nil {
			t.Fatal(err)
		}
	}
}

func firstSlot(m map[string]any) map[string]any {
	slots := m["keyslots"].(map[string]any)
	ids := make([]string, 0, len(slots))
	for id := range slots {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return slots[ids[0]].(map[string]any)
}

func keyslotIDsOnDisk(t *testing.T, path string) []string {
	t.Helper()
	slots := dumpJSON(t, path)["keyslots"].(map[string]any)
	ids := make([]string, 0, len(slots))
	for id := range slots {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// keyOpens tells whether key opens a keyslot of the header on disk, without
// the allow-list or a pin: what the key would be worth to whoever holds it.
func keyOpens(t *testing.T, path string, key []byte) bool {
	t.Helper()
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	lockLib()
	defer libMu.Unlock()
	return d.checkKeyLocked(key) == nil
}
