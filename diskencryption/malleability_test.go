package diskencryption

import (
	"errors"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/testutil"
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

	testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) {
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
