package attestationflags

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/spf13/afero"
)

func TestAKPins(t *testing.T) {
	fs := afero.NewMemMapFs()
	// The image's whole PCR map (11, 12, 15): a partial file is refused on its own.
	v := `"` + strings.Repeat("ab", 32) + `"`
	_ = afero.WriteFile(fs, "/m.json", []byte(`{"11":`+v+`,"12":`+v+`,"15":"`+strings.Repeat("00", 32)+`"}`), 0o644)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	pin := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})
	_ = afero.WriteFile(fs, "/pins.pem", append(append([]byte{}, pin...), pin...), 0o644)
	_ = afero.WriteFile(fs, "/empty.pem", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644)
	for name, tc := range map[string]struct {
		args    []string
		wantErr string
	}{
		"pins":              {args: []string{"--measurements", "/m.json", "--ak-pins", "/pins.pem"}},
		"pins and any AK":   {args: []string{"--measurements", "/m.json", "--ak-pins", "/pins.pem", "--insecure-trust-any-ak"}, wantErr: "cannot be combined"},
		"no public key":     {args: []string{"--measurements", "/m.json", "--ak-pins", "/empty.pem"}, wantErr: "no PEM PUBLIC KEY"},
		"missing pins file": {args: []string{"--measurements", "/m.json", "--ak-pins", "/nope.pem"}, wantErr: "nope.pem"},
		"pins with dev":     {args: []string{"--insecure-dev-attestation", "--ak-pins", "/pins.pem"}, wantErr: "cannot be combined"},
	} {
		t.Run(name, func(t *testing.T) {
			v, err := parse(t, tc.args...).Validator(fs, nil)
			if tc.wantErr == "" {
				if err != nil || v == nil {
					t.Fatalf("Validator: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
