package attestationflags

import (
	"flag"
	"strings"
	"testing"

	"github.com/spf13/afero"
)

func parse(t *testing.T, args ...string) Flags {
	t.Helper()
	var f Flags
	fl := flag.NewFlagSet("test", flag.ContinueOnError)
	f.Register(fl)
	if err := fl.Parse(args); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestValidatorFromFlags(t *testing.T) {
	fs := afero.NewMemMapFs()
	_ = afero.WriteFile(fs, "/m.json", []byte(`{"11":"`+strings.Repeat("ab", 32)+`"}`), 0o644)
	_ = afero.WriteFile(fs, "/roots.pem", []byte("not a certificate"), 0o644)
	for name, tc := range map[string]struct {
		args    []string
		wantErr string
	}{
		"dev alone":            {args: []string{"--insecure-dev-attestation"}},
		"measurements, any AK": {args: []string{"--measurements", "/m.json", "--insecure-trust-any-ak"}},
		"dev combined":         {args: []string{"--insecure-dev-attestation", "--measurements", "/m.json"}, wantErr: "cannot be combined"},
		"nothing":              {args: nil, wantErr: "--measurements is required"},
		"no AK trust":          {args: []string{"--measurements", "/m.json"}, wantErr: "no AK trust"},
		"missing file":         {args: []string{"--measurements", "/nope.json", "--insecure-trust-any-ak"}, wantErr: "nope.json"},
		"roots without PEM":    {args: []string{"--measurements", "/m.json", "--ak-roots", "/roots.pem"}, wantErr: "holds no PEM certificate"},
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
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
