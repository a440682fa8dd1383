package diskencryption

import (
	"errors"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/testutil"
)

// Issue 9 item 5: a header whose KDF would take hours per key check (the
// library lock is held meanwhile, so every push would hang) is refused
// before any key is tried, on a real header file.
func TestCheckKeyRefusesSlowKDFBeforeTryingAKey(t *testing.T) {
	for name, tc := range map[string]struct {
		edit  func(m map[string]any)
		field string
	}{
		"keyslot iterations 2^31": {func(m map[string]any) { slot(m)["kdf"].(map[string]any)["iterations"] = 1 << 31 }, "keyslots.0.kdf.iterations"},
		"digest iterations 2^31": {func(m map[string]any) {
			m["digests"].(map[string]any)["0"].(map[string]any)["iterations"] = 1 << 31
		}, "digests.0.iterations"},
	} {
		t.Run(name, func(t *testing.T) {
			d, key := formatOurs(t)
			if err := d.SetState(StateInitialized); err != nil {
				t.Fatal(err)
			}
			path := d.Path()
			d.Close()
			testutil.RewriteLUKS2HeaderJSON(t, path, tc.edit)
			slow, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer slow.Close()
			var herr *HeaderError
			// VerifyHeader first: were it to pass, CheckKey would run for hours.
			if err := slow.VerifyHeader(); !errors.As(err, &herr) || herr.Field != tc.field {
				t.Fatalf("VerifyHeader = %v, want a *HeaderError naming %s", err, tc.field)
			}
			start := time.Now()
			if err := slow.CheckKey(key); !errors.As(err, &herr) || herr.Field != tc.field {
				t.Fatalf("CheckKey = %v, want a *HeaderError naming %s", err, tc.field)
			}
			t.Logf("refused in %v: %v", time.Since(start), herr)
		})
	}
}
