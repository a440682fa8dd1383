package diskencryption

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/testutil"
)

// Real headers made by the cryptsetup CLI that differ from ours in one
// respect each; VerifyHeader must name the field.
func TestVerifyHeaderRefusesCLIHeaders(t *testing.T) {
	pass := randomKey(t)
	tests := map[string]struct {
		make      func(t *testing.T) string
		wantField string
	}{
		"argon2id KDF": {
			make: func(t *testing.T) string {
				return cliFormat(t, pass, "--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4")
			},
			wantField: "keyslots.0.kdf.type",
		},
		"aes-cbc-essiv cipher": {
			make: func(t *testing.T) string {
				return cliFormat(t, pass, "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256")
			},
			wantField: "segments.0.encryption",
		},
		"512-byte sectors": {
			make:      func(t *testing.T) string { return cliFormat(t, pass, "--sector-size", "512") },
			wantField: "segments.0.sector_size",
		},
		"aes-xts with a 256-bit key": {
			make:      func(t *testing.T) string { return cliFormat(t, pass, "--key-size", "256") },
			wantField: "keyslots.0.key_size",
		},
		"foreign token": {
			make: func(t *testing.T) string {
				path := cliFormat(t, pass)
				tok := filepath.Join(t.TempDir(), "token.json")
				if err := os.WriteFile(tok, []byte(`{"type":"attacker-unlock","keyslots":["0"],"url":"https://attacker.example/"}`), 0o600); err != nil {
					t.Fatal(err)
				}
				testutil.CryptsetupCLI(t, nil, "token", "import", "--json-file", tok, path)
				return path
			},
			wantField: "tokens.0.type",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d, err := Open(tc.make(t))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			err = d.VerifyHeader()
			var herr *HeaderError
			if !errors.As(err, &herr) || !errors.Is(err, ErrHeaderRefused) {
				t.Fatalf("VerifyHeader = %v, want *HeaderError", err)
			}
			if herr.Field != tc.wantField {
				t.Fatalf("HeaderError.Field = %q (%v), want %q", herr.Field, err, tc.wantField)
			}
			t.Log(err)
		})
	}
}

// The CLI cannot write every malicious header, so these cases edit the
// JSON dump of a real header of ours and run the allow-list on it (the
// CLI-made headers above cover the path from disk to the allow-list).
func TestVerifyMetadataRefusesEditedJSON(t *testing.T) {
	d, _ := formatOurs(t)
	lockLib()
	dump, err := d.dev.DumpJSON()
	libMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if m, err := parseMetadata(dump); err != nil || verifyMetadata(m) != nil {
		t.Fatalf("unedited dump: parse %v, verify %v", err, verifyMetadata(m))
	}

	// What an integrity format writes (the host cannot make one; the VM
	// scenario "blank disk with integrity" formats a real one) must pass.
	var withIntegrity map[string]any
	if err := json.Unmarshal([]byte(dump), &withIntegrity); err != nil {
		t.Fatal(err)
	}
	seg(withIntegrity)["integrity"] = map[string]any{"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}
	slot(withIntegrity)["key_size"] = 96
	if b, _ := json.Marshal(withIntegrity); true {
		md, err := parseMetadata(string(b))
		if err != nil || verifyMetadata(md) != nil {
			t.Fatalf("integrity header: parse %v, verify %v", err, verifyMetadata(md))
		}
	}

	tests := map[string]struct {
		edit      func(m map[string]any)
		wantField string
	}{
		"segment cipher_null": {
			edit:      func(m map[string]any) { seg(m)["encryption"] = "cipher_null-ecb" },
			wantField: "segments.0.encryption",
		},
		"keyslot area cipher_null": {
			edit:      func(m map[string]any) { slot(m)["area"].(map[string]any)["encryption"] = "cipher_null-ecb" },
			wantField: "keyslots.0.area.encryption",
		},
		"second segment": {
			edit:      func(m map[string]any) { m["segments"].(map[string]any)["1"] = seg(m) },
			wantField: "segments",
		},
		"integrity other than hmac(sha256)": {
			edit: func(m map[string]any) {
				seg(m)["integrity"] = map[string]any{"type": "crc32c", "journal_encryption": "none", "journal_integrity": "none"}
			},
			wantField: "segments.0.integrity.type",
		},
		"integrity needs a 96-byte volume key": {
			edit: func(m map[string]any) {
				seg(m)["integrity"] = map[string]any{"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}
			},
			wantField: "keyslots.0.key_size",
		},
		"unknown requirement": {
			edit: func(m map[string]any) {
				m["config"].(map[string]any)["requirements"] = map[string]any{"mandatory": []any{"online-reencrypt-v2"}}
			},
			wantField: "config.requirements.mandatory",
		},
		"data offset inside the keyslot area": {
			edit:      func(m map[string]any) { seg(m)["offset"] = "32768" },
			wantField: "segments.0.offset",
		},
		"digest not covering every keyslot": {
			edit: func(m map[string]any) {
				m["keyslots"].(map[string]any)["1"] = slot(m)
			},
			wantField: "digests.0.keyslots",
		},
		"second digest": {
			edit: func(m map[string]any) {
				ds := m["digests"].(map[string]any)
				ds["1"] = ds["0"]
			},
			wantField: "digests",
		},
		"unknown segment field": {
			edit:      func(m map[string]any) { seg(m)["flags"] = []any{"backup-final"} },
			wantField: "segments.0.flags",
		},
		"persistent activation flag": {
			edit:      func(m map[string]any) { m["config"].(map[string]any)["flags"] = []any{"no-journal"} },
			wantField: "config.flags",
		},
		"pbkdf2 with sha1": {
			edit:      func(m map[string]any) { slot(m)["kdf"].(map[string]any)["hash"] = "sha1" },
			wantField: "keyslots.0.kdf.hash",
		},
		"unknown state in our token": {
			edit: func(m map[string]any) {
				m["tokens"].(map[string]any)["0"].(map[string]any)["state"] = "pwned"
			},
			wantField: "tokens",
		},
		"keyslot PBKDF2 iterations 2^31 (hours per key check)": {
			edit:      func(m map[string]any) { slot(m)["kdf"].(map[string]any)["iterations"] = 1 << 31 },
			wantField: "keyslots.0.kdf.iterations",
		},
		"keyslot PBKDF2 iterations one above Format's": {
			edit:      func(m map[string]any) { slot(m)["kdf"].(map[string]any)["iterations"] = kdfIterations + 1 },
			wantField: "keyslots.0.kdf.iterations",
		},
		"digest iterations 2^31 (runs after every keyslot decryption)": {
			edit: func(m map[string]any) {
				m["digests"].(map[string]any)["0"].(map[string]any)["iterations"] = 1 << 31
			},
			wantField: "digests.0.iterations",
		},
		"no keyslot": {
			edit:      func(m map[string]any) { m["keyslots"] = map[string]any{} },
			wantField: "keyslots",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var m map[string]any
			if err := json.Unmarshal([]byte(dump), &m); err != nil {
				t.Fatal(err)
			}
			tc.edit(m)
			edited, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			md, err := parseMetadata(string(edited))
			if err != nil {
				t.Fatal(err)
			}
			err = verifyMetadata(md)
			var herr *HeaderError
			if !errors.As(err, &herr) || herr.Field != tc.wantField {
				t.Fatalf("verifyMetadata = %v, want *HeaderError on %q", err, tc.wantField)
			}
			if !strings.Contains(err.Error(), tc.wantField) {
				t.Fatalf("error %q does not name the field", err)
			}
		})
	}
}

func seg(m map[string]any) map[string]any {
	return m["segments"].(map[string]any)["0"].(map[string]any)
}

// slot returns a copy-free view of keyslot 0.
func slot(m map[string]any) map[string]any {
	return m["keyslots"].(map[string]any)["0"].(map[string]any)
}
