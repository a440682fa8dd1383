package diskencryption

import (
	"testing"
)

// FuzzVerifyMetadata fuzzes the LUKS2 JSON metadata parser and the header
// allow-list with what an attacker controls: the whole (unauthenticated)
// JSON area. Seeds: testdata/fuzz/FuzzVerifyMetadata (a real dump of a
// header Format wrote, and attacked variants) plus a fresh dump made here.
// Invariants: no panic; an accepted header carries exactly what Format
// writes in the fields that decide confidentiality.
func FuzzVerifyMetadata(f *testing.F) {
	if d, err := Format(newDisk(f, testDiskSize), FormatOptions{}, randomKey(f)); err == nil {
		lockLib()
		dump, derr := d.dev.DumpJSON()
		libMu.Unlock()
		d.Close()
		if derr == nil {
			f.Add(dump)
		}
	}
	f.Add(`{"keyslots":{},"tokens":{},"segments":{},"digests":{},"config":{}}`)
	f.Fuzz(func(t *testing.T, dump string) {
		m, err := parseMetadata(dump)
		if err != nil {
			return
		}
		if err := verifyMetadata(m); err != nil {
			return
		}
		if got := stringOf(objectField(m.segments["0"], "encryption")); got != cipherSpec {
			t.Fatalf("accepted a segment with encryption %q", got)
		}
		if len(m.keyslots) == 0 || len(m.digests) != 1 {
			t.Fatalf("accepted %d keyslots and %d digests", len(m.keyslots), len(m.digests))
		}
		for id, ks := range m.keyslots {
			if kdf := stringOf(objectField(objectField(ks, "kdf"), "type")); kdf != kdfType {
				t.Fatalf("accepted keyslot %s with KDF %q", id, kdf)
			}
			if enc := stringOf(objectField(objectField(ks, "area"), "encryption")); enc != cipherSpec {
				t.Fatalf("accepted keyslot %s with area encryption %q", id, enc)
			}
		}
		if _, _, err := m.stateToken(); err != nil {
			t.Fatalf("accepted a header whose state token is doubtful: %v", err)
		}
	})
}
