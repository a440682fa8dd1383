package diskencryption

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/internal/unlock"
)

func TestFormatWritesOurHeader(t *testing.T) {
	d, key := formatOurs(t)

	if err := d.VerifyHeader(); err != nil {
		t.Fatalf("VerifyHeader on our own header: %v", err)
	}
	if s, err := d.State(); err != nil || s != StateFormatting {
		t.Fatalf("State = %q, %v; want %q", s, err, StateFormatting)
	}
	cliUUID := strings.TrimSpace(string(testutil.CryptsetupCLI(t, nil, "luksUUID", d.Path())))
	if d.UUID() != strings.ToLower(cliUUID) || d.UUID() != strings.ToLower(d.UUID()) || d.UUID() == "" {
		t.Fatalf("UUID = %q, cryptsetup says %q", d.UUID(), cliUUID)
	}

	m := dumpJSON(t, d.Path())
	seg := m["segments"].(map[string]any)["0"].(map[string]any)
	if seg["encryption"] != cipherSpec || seg["sector_size"] != float64(4096) {
		t.Errorf("segment = %v", seg)
	}
	slots := m["keyslots"].(map[string]any)
	if len(slots) != 1 {
		t.Fatalf("keyslots = %v, want one", slots)
	}
	for _, s := range slots {
		kdf := s.(map[string]any)["kdf"].(map[string]any)
		if kdf["type"] != "pbkdf2" || kdf["hash"] != "sha256" || kdf["iterations"] != float64(1000) {
			t.Errorf("kdf = %v, want pbkdf2/sha256/1000", kdf)
		}
	}
	testutil.CryptsetupCLI(t, key, "open", "--test-passphrase", "--key-file", "-", d.Path())

	f, err := os.Open(d.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	last := make([]byte, formatMarkerSize)
	if _, err := f.ReadAt(last, testDiskSize-formatMarkerSize); err != nil {
		t.Fatal(err)
	}
	if firstNonZero(last) >= 0 {
		t.Fatal("Format left its format marker behind")
	}
}

func TestCheckKey(t *testing.T) {
	d, key := formatOurs(t)

	if err := d.CheckKey(key); err != nil {
		t.Fatalf("CheckKey(right key): %v", err)
	}
	wrong := bytes.Clone(key)
	wrong[0] ^= 1
	if err := d.CheckKey(wrong); !errors.Is(err, unlock.ErrWrongKey) {
		t.Fatalf("CheckKey(wrong key) = %v, want ErrWrongKey", err)
	}
	for name, k := range map[string][]byte{"empty": nil, "oversized": make([]byte, MaxKeySize+1)} {
		if err := d.CheckKey(k); !errors.Is(err, unlock.ErrMalformed) {
			t.Errorf("CheckKey(%s) = %v, want ErrMalformed", name, err)
		}
	}
	// The header on disk, not just the handle, holds the key.
	d2, err := Open(d.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if err := d2.CheckKey(key); err != nil {
		t.Fatalf("CheckKey after reopening: %v", err)
	}
}

func TestCheckKeyConcurrent(t *testing.T) {
	d, key := formatOurs(t)
	wrong := randomKey(t)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				if i%2 == 0 {
					if err := d.CheckKey(key); err != nil {
						errs <- err
					}
				} else if err := d.CheckKey(wrong); !errors.Is(err, unlock.ErrWrongKey) {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestEnrollKey(t *testing.T) {
	d, tmpKey := formatOurs(t)
	clusterKey := randomKey(t)

	if err := d.EnrollKey(randomKey(t), clusterKey); !errors.Is(err, unlock.ErrWrongKey) {
		t.Fatalf("EnrollKey with a wrong old key = %v, want ErrWrongKey", err)
	}
	if err := d.CheckKey(tmpKey); err != nil {
		t.Fatalf("a refused EnrollKey must leave the old key working: %v", err)
	}

	if err := d.EnrollKey(tmpKey, clusterKey); err != nil {
		t.Fatalf("EnrollKey: %v", err)
	}
	if err := d.CheckKey(tmpKey); !errors.Is(err, unlock.ErrWrongKey) {
		t.Fatalf("old key after EnrollKey = %v, want ErrWrongKey", err)
	}
	if err := d.CheckKey(clusterKey); err != nil {
		t.Fatalf("new key after EnrollKey: %v", err)
	}
	if err := d.VerifyHeader(); err != nil {
		t.Fatalf("VerifyHeader after EnrollKey: %v", err)
	}

	m := dumpJSON(t, d.Path())
	slots := m["keyslots"].(map[string]any)
	if len(slots) != 1 {
		t.Fatalf("keyslots after EnrollKey = %d, want 1", len(slots))
	}
	for _, s := range slots {
		kdf := s.(map[string]any)["kdf"].(map[string]any)
		if kdf["type"] != "pbkdf2" || kdf["iterations"] != float64(1000) {
			t.Errorf("new keyslot kdf = %v, want pbkdf2 with 1000 iterations", kdf)
		}
	}
	testutil.CryptsetupCLI(t, clusterKey, "open", "--test-passphrase", "--key-file", "-", d.Path())
}

func TestSetStateRoundTrip(t *testing.T) {
	d, _ := formatOurs(t)
	for _, s := range []State{StateKeyed, StateInitialized} {
		if err := d.SetState(s); err != nil {
			t.Fatalf("SetState(%q): %v", s, err)
		}
		reopened, err := Open(d.Path())
		if err != nil {
			t.Fatal(err)
		}
		got, err := reopened.State()
		reopened.Close()
		if err != nil || got != s {
			t.Fatalf("State after SetState(%q) = %q, %v", s, got, err)
		}
		tokens := dumpJSON(t, d.Path())["tokens"].(map[string]any)
		if len(tokens) != 1 {
			t.Fatalf("tokens = %v, want exactly one (replaced, not added)", tokens)
		}
		for _, tok := range tokens {
			if tok.(map[string]any)["type"] != constants.LUKSTokenType {
				t.Fatalf("token = %v", tok)
			}
		}
		if err := d.VerifyHeader(); err != nil {
			t.Fatalf("VerifyHeader with state %q: %v", s, err)
		}
	}
	for _, bad := range []State{StateNone, "bogus"} {
		if err := d.SetState(bad); err == nil {
			t.Errorf("SetState(%q) succeeded", bad)
		}
	}
}

func TestClosedDevice(t *testing.T) {
	d, key := formatOurs(t)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckKey(key); !errors.Is(err, errClosed) {
		t.Fatalf("CheckKey after Close = %v", err)
	}
	if _, err := d.State(); !errors.Is(err, errClosed) {
		t.Fatalf("State after Close = %v", err)
	}
}

func TestOpenRefusesNonLUKS2(t *testing.T) {
	if _, err := Open(newDisk(t, testDiskSize)); err == nil {
		t.Fatal("Open of a zero file succeeded")
	}
	luks1 := cliLUKS1(t, randomKey(t))
	if _, err := Open(luks1); err == nil || !strings.Contains(err.Error(), "LUKS1") {
		t.Fatalf("Open of a LUKS1 header = %v, want an error naming LUKS1", err)
	}
}

// Activation needs device-mapper, which the host lacks; the VM scenarios
// "blank disk" and "existing disk" cover the mapping itself. Here: the
// allow-list and key checks run before any mapping is attempted.
func TestActivateRefusesBeforeMapping(t *testing.T) {
	pass := randomKey(t)
	path := cliFormat(t, pass, "--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4")
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var herr *HeaderError
	if err := d.Activate("dm-test", pass); !errors.As(err, &herr) {
		t.Fatalf("Activate on an argon2id header = %v, want *HeaderError", err)
	}
	if err := d.CheckKey(pass); !errors.As(err, &herr) {
		t.Fatalf("CheckKey on an argon2id header = %v, want *HeaderError before any key is tried", err)
	}
	ours, _ := formatOurs(t)
	if err := ours.Activate("dm-test", nil); !errors.Is(err, unlock.ErrMalformed) {
		t.Fatalf("Activate with an empty key = %v, want ErrMalformed", err)
	}
	if err := ours.Activate("", randomKey(t)); err == nil {
		t.Fatal("Activate with an empty name succeeded")
	}
}

func cliLUKS1(t testing.TB, pass []byte) string {
	t.Helper()
	path := newDisk(t, testDiskSize)
	testutil.CryptsetupCLI(t, pass, "luksFormat", "-q", "--type", "luks1", "--pbkdf-force-iterations", "1000", "--key-file", "-", path)
	return path
}
