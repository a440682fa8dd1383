package diskencryption

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"testing"
)

// The 2025 header-malleability attack on a real header: an attacker who
// controls the disk rewrites the unauthenticated JSON area (and recomputes
// its plain SHA-256 checksum) so that the data segment uses cipher_null.
// libcryptsetup loads it and the key still opens it; only the allow-list
// stands between that and the node writing plaintext.
func TestVerifyHeaderRefusesCipherNullRewrite(t *testing.T) {
	d, key := formatOurs(t)
	if err := d.SetState(StateInitialized); err != nil {
		t.Fatal(err)
	}
	path := d.Path()
	d.Close()

	rewriteHeaderJSON(t, path, func(m map[string]any) {
		seg(m)["encryption"] = "cipher_null-ecb"
	})

	attacked, err := Open(path)
	if err != nil {
		t.Fatalf("libcryptsetup refused the rewritten header (the attack needs it to load): %v", err)
	}
	defer attacked.Close()
	lockLib()
	loadedKeyOK := attacked.checkKeyLocked(key)
	libMu.Unlock()
	if loadedKeyOK != nil {
		t.Fatalf("the key no longer opens the rewritten header: %v", loadedKeyOK)
	}

	var herr *HeaderError
	if err := attacked.VerifyHeader(); !errors.As(err, &herr) || herr.Field != "segments.0.encryption" {
		t.Fatalf("VerifyHeader = %v, want *HeaderError on segments.0.encryption", err)
	}
	if err := attacked.CheckKey(key); !errors.As(err, &herr) {
		t.Fatalf("CheckKey = %v, want the header refused before the key is tried", err)
	}
	if p, err := ProbeDevice(path); err != nil || p.Kind != KindLUKS2 || p.State != StateInitialized {
		t.Fatalf("ProbeDevice = %+v, %v (the probe reports, VerifyHeader refuses)", p, err)
	}
}

// rewriteHeaderJSON edits the JSON area of both LUKS2 header copies and
// recomputes their checksums, as an attacker with write access would.
func rewriteHeaderJSON(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bin := make([]byte, 4096)
	if _, err := f.ReadAt(bin, 0); err != nil {
		t.Fatal(err)
	}
	hdrSize := int64(binary.BigEndian.Uint64(bin[8:16]))
	for _, off := range []int64{0, hdrSize} {
		hdr := make([]byte, hdrSize)
		if _, err := f.ReadAt(hdr, off); err != nil {
			t.Fatal(err)
		}
		jsonArea := hdr[4096:]
		var m map[string]any
		if err := json.Unmarshal(bytes.TrimRight(jsonArea, "\x00"), &m); err != nil {
			t.Fatalf("header copy at %d: %v", off, err)
		}
		edit(m)
		edited, err := json.Marshal(m)
		if err != nil || len(edited) >= len(jsonArea) {
			t.Fatalf("edited JSON: %v (%d bytes)", err, len(edited))
		}
		clear(jsonArea)
		copy(jsonArea, edited)
		const csumOff, csumLen = 448, 64
		clear(hdr[csumOff : csumOff+csumLen])
		sum := sha256.Sum256(hdr)
		copy(hdr[csumOff:], sum[:])
		if _, err := f.WriteAt(hdr, off); err != nil {
			t.Fatal(err)
		}
	}
}
