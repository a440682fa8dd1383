package faults

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/setup"
)

// Issue 9 items 1 and 5: the header a node formats is the header it enrols
// into and maps (a rewrite during the key wait is refused, naming the
// field); the allow-list pins the KDF cost; the format marker decides what
// is an interrupted format.

// TestDiskHeaderRewrittenDuringKeyWait: a blank disk is formatted, and
// while the node waits for its key the host rewrites the header. The
// operator's push wins the race, but the node must refuse to enrol it,
// name the field, and wait for an operator with the listener up.
func TestDiskHeaderRewrittenDuringKeyWait(t *testing.T) {
	cases := []struct {
		name, field string
		rewrite     func(t *testing.T, path, uuid string)
	}{
		{"segment cipher swapped to cipher_null", "segments.0.encryption", func(t *testing.T, path, _ string) {
			testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) { section(m, "segments", "0")["encryption"] = "cipher_null-ecb" })
		}},
		{"keyslot area moved (allow-list compliant)", "keyslots.0.area.offset", moveFirstKeyslotArea},
		{"host's own header, same UUID and token", "digests.0.digest", func(t *testing.T, path, uuid string) {
			host := newBlankFile(t, diskSize)
			testutil.CLIFormatLUKS2(t, host, randomKey(t), "--uuid", uuid)
			importStateToken(t, host, "formatting")
			testutil.WriteAt(t, path, 0, readAll(t, host)[:headerRegion])
		}},
		{"keyslot PBKDF2 iterations raised to 2^31", "keyslots.0.kdf.iterations", func(t *testing.T, path, _ string) {
			testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) {
				section(m, "keyslots", "")["kdf"].(map[string]any)["iterations"] = 1 << 31
			})
		}},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			path := newBlankFile(t, diskSize)
			before := readAll(t, path)
			n := startNode(t, path)
			st := n.waitStarted(t)
			if st.mode != setup.ModeBlank {
				t.Fatalf("node started in mode %v, want blank", st.mode)
			}
			tc.rewrite(t, path, st.uuid)
			slotsBefore := keyslotCount(t, path)
			secret, salt, key := randomKey(t), randomKey(t), randomKey(t)
			_, pushErr := pushKey(st.addr, operatorCreds(t, nil), secret, salt, key)
			refused := n.waitStarted(t) // the refusal's listener
			_, againErr := pushKey(refused.addr, operatorCreds(t, nil), secret, salt, key)
			runErr := n.stop(t)

			reason := field(n.logs, refusedMsg, "reason")
			slotsAfter := keyslotCount(t, path)
			// Trying a key on a 2^31-iteration keyslot takes hours; the
			// keyslot count shows nothing was added there.
			opens := !strings.Contains(tc.name, "2^31") && cliKeyOpens(path, key)
			got := fmt.Sprintf("push %s; refused naming %s: %v; keyslots %d→%d; key opens: %v; second push %s; run: %v",
				code(pushErr), tc.field, strings.Contains(reason, tc.field), slotsBefore, slotsAfter, opens, code(againErr), shortErr(runErr))
			survived := refused.mode == setup.ModeRefused && strings.Contains(reason, tc.field) &&
				slotsAfter == slotsBefore && !opens && refusedWith(againErr, reason) &&
				errors.Is(runErr, setup.ErrRefused) && len(n.mounter.calls) == 0
			record(t, outcome{Case: "disk: header rewritten during the key wait: " + tc.name,
				Expected: "refused naming the field, nothing enrolled, listener up", Got: got,
				Survived: survived, DataLost: changedBytes(before, readAll(t, path), headerRegion)})
		})
	}
}

// TestDiskSlowKDF: an initialized disk whose keyslot KDF would take hours
// per key check is refused before any key is tried (today every push
// would hang on the library lock).
func TestDiskSlowKDF(t *testing.T) {
	d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	testutil.RewriteLUKS2HeaderJSON(t, d.path, func(m map[string]any) {
		section(m, "keyslots", "")["kdf"].(map[string]any)["iterations"] = 1 << 31
	})
	expectRefused(t, "weakened header: keyslot PBKDF2 iterations raised to 2^31", d.path)
}

// TestDiskKeylessLUKS2WithoutMarker: a LUKS2 header with no keyslot and no
// token of ours, and no format marker, is someone else's, not an
// interrupted format: it is refused, never formatted.
func TestDiskKeylessLUKS2WithoutMarker(t *testing.T) {
	path := makeCLILUKS2(t, randomKey(t))
	testutil.CryptsetupCLI(t, nil, "luksKillSlot", "-q", path, "0")
	expectRefused(t, "foreign: LUKS2 without keyslots or token, no format marker", path)
}

// TestDiskReformatAfterWipeCrashed: a never-initialized disk of ours whose
// earlier attempt ran the integrity wipe (ciphertext up to the last byte)
// is formatted again and crashes; the next boot must format it again.
func TestDiskReformatAfterWipeCrashed(t *testing.T) {
	cases := map[string]func(t *testing.T, path string){
		// crypt_format zeroed the header areas and filled the keyslot area
		// with random bytes, and had not written its header yet.
		"inside crypt_format (marker, no header)": func(t *testing.T, path string) {
			testutil.WriteAt(t, path, 0, make([]byte, 32*1024))
			testutil.WriteAt(t, path, 32*1024, testutil.RandomBytes(t, headerRegion-32*1024))
		},
		// crypt_format wrote its header; the state token is not there yet.
		"after crypt_format (marker, header without keyslot or token)": func(t *testing.T, path string) {
			host := newBlankFile(t, diskSize)
			testutil.CLIFormatLUKS2(t, host, randomKey(t))
			testutil.CryptsetupCLI(t, nil, "luksKillSlot", "-q", host, "0")
			testutil.WriteAt(t, path, 0, readAll(t, host)[:headerRegion])
		},
	}
	for name, crash := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			d := newOurDisk(t, diskencryption.StateKeyed, anyKey(t))
			testutil.WriteAt(t, d.path, headerRegion, testutil.RandomBytes(t, diskSize-headerRegion))
			writeFormatMarker(t, d.path)
			crash(t, d.path)
			expectReformatted(t, "re-format after an integrity-wiped attempt, crash "+name, d.path, d.uuid)
		})
	}
}

// expectReformatted is expectFormatted for a disk that carries the format
// marker: clearing it is Format's own step, not data lost, so the last
// 4 KiB are left out of the count (a never-initialized disk holds no data;
// everything before the marker must stay as it was anyway).
func expectReformatted(t *testing.T, name, path, oldUUID string) {
	t.Helper()
	before := readAll(t, path)
	n := startNode(t, path)
	st := n.waitStarted(t)
	probe, perr := diskencryption.ProbeDevice(path)
	secret, salt, key := randomKey(t), randomKey(t), randomKey(t)
	uuid, pushErr := pushKey(st.addr, operatorCreds(t, nil), secret, salt, key)
	runErr := n.wait(t)
	after := readAll(t, path)
	final, _ := diskencryption.ProbeDevice(path)
	opens := checkKey(path, key) == nil
	got := fmt.Sprintf("formatted %s (state %s, new uuid %v); push %s; enrolled key opens: %v; final state %s; run: %v",
		probe.Kind, probe.State, probe.UUID != oldUUID, code(pushErr), opens, final.State, shortErr(runErr))
	survived := perr == nil && st.mode == setup.ModeBlank && probe.Kind == diskencryption.KindLUKS2 &&
		probe.State == diskencryption.StateFormatting && probe.UUID != oldUUID && uuid == probe.UUID &&
		pushErr == nil && opens && final.State == diskencryption.StateKeyed &&
		runErr != nil && strings.Contains(runErr.Error(), "mapping state disk")
	record(t, outcome{Case: "disk: " + name, Expected: "formatted, key enrolled (stops at Activate on host)", Got: got,
		Survived: survived, DataLost: changedBytes(before[:len(before)-4096], after[:len(after)-4096], headerRegion)})
}

// TestDiskMarkerOnInitializedDisk: the host writes the format marker onto
// an initialized disk; a header that loads decides, it is unlocked.
func TestDiskMarkerOnInitializedDisk(t *testing.T) {
	d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	writeFormatMarker(t, d.path)
	expectUnlocked(t, "ours, initialized, format marker written at the end by the host", d, nil, nil)
}

// writeFormatMarker writes what diskencryption's Format writes first into
// the last 4 KiB (marker.go; a drift makes the re-format cases fail).
func writeFormatMarker(t *testing.T, path string) {
	t.Helper()
	block := make([]byte, 4096)
	copy(block, "disk-mapper: LUKS2 format in progress; nothing on this disk is readable\n")
	testutil.WriteAt(t, path, diskSize-4096, block)
}

func importStateToken(t *testing.T, path, state string) {
	t.Helper()
	tok := filepath.Join(t.TempDir(), "token.json")
	if err := os.WriteFile(tok, []byte(`{"type":"disk-mapper-state","keyslots":[],"state":"`+state+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.CryptsetupCLI(t, nil, "token", "import", "--json-file", tok, path)
}

// moveFirstKeyslotArea moves keyslot 0's area further into the keyslot area
// with its bytes: the header passes the allow-list and opens as before.
func moveFirstKeyslotArea(t *testing.T, path, _ string) {
	t.Helper()
	area := section(luksDump(t, path), "keyslots", "")["area"].(map[string]any)
	off, _ := strconv.ParseInt(area["offset"].(string), 10, 64)
	size, _ := strconv.ParseInt(area["size"].(string), 10, 64)
	newOff := off + size + 64*1024
	testutil.WriteAt(t, path, newOff, readAll(t, path)[off:off+size])
	testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) {
		section(m, "keyslots", "")["area"].(map[string]any)["offset"] = strconv.FormatInt(newOff, 10)
	})
}

func luksDump(t *testing.T, path string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(testutil.CryptsetupCLI(t, nil, "luksDump", "--dump-json-metadata", path), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func keyslotCount(t *testing.T, path string) int {
	t.Helper()
	return len(luksDump(t, path)["keyslots"].(map[string]any))
}

// cliKeyOpens asks cryptsetup, without any allow-list, whether key opens a
// keyslot of path: what the key is worth on that header.
func cliKeyOpens(path string, key []byte) bool {
	cmd := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", "-", path)
	cmd.Stdin = bytes.NewReader(key)
	return cmd.Run() == nil
}
