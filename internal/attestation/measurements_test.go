package attestation_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/afero"

	"github.com/diskmapper/disk-mapper/internal/attestation"
)

func TestLoadMeasurements(t *testing.T) {
	fs := afero.NewMemMapFs()
	v11 := strings.Repeat("ab", 32)
	good := `{"11":"` + v11 + `","15":"` + strings.Repeat("00", 32) + `"}`
	if err := afero.WriteFile(fs, "/m.json", []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := attestation.LoadMeasurements(fs, "/m.json")
	if err != nil {
		t.Fatalf("LoadMeasurements: %v", err)
	}
	if !bytes.Equal(m[11], bytes.Repeat([]byte{0xab}, 32)) || len(m) != 2 {
		t.Fatalf("got %x", m)
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back attestation.Measurements
	if err := json.Unmarshal(out, &back); err != nil || !bytes.Equal(back[11], m[11]) {
		t.Fatalf("round trip: %s, %v", out, err)
	}

	for name, bad := range map[string]string{
		"not json":    `{`,
		"bad index":   `{"x":"` + v11 + `"}`,
		"index 24":    `{"24":"` + v11 + `"}`,
		"short value": `{"11":"abcd"}`,
		"not hex":     `{"11":"` + strings.Repeat("zz", 32) + `"}`,
		"PCR 15 set":  `{"15":"` + v11 + `"}`,
		"unquoted":    `{"16":"` + v11 + `"}`,
	} {
		_ = afero.WriteFile(fs, "/bad.json", []byte(bad), 0o644)
		if _, err := attestation.LoadMeasurements(fs, "/bad.json"); err == nil {
			t.Errorf("%s: accepted %s", name, bad)
		}
	}
	if _, err := attestation.LoadMeasurements(fs, "/missing.json"); err == nil {
		t.Error("missing file accepted")
	}
}
