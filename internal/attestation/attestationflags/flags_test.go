package attestationflags

import (
	"flag"
	"strings"
	"testing"

	"github.com/spf13/afero"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
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
	v := `"` + strings.Repeat("ab", 32) + `"`
	_ = afero.WriteFile(fs, "/m.json", []byte(`{"11":`+v+`,"12":`+v+`,"15":"`+strings.Repeat("00", 32)+`"}`), 0o644)
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

// A measurements file that leaves one of the map's PCRs (11, 12, 15) open
// would accept a node with any value there, e.g. booted with any flags:
// it is refused unless the development flag allows it, with a warning.
func TestPartialMeasurementsRefusedUnlessAllowed(t *testing.T) {
	fs := afero.NewMemMapFs()
	v := `"` + strings.Repeat("ab", 32) + `"`
	zero := `"` + strings.Repeat("00", 32) + `"`
	for name, content := range map[string]string{
		"empty object": `{}`,
		"no PCR 12":    `{"11":` + v + `,"15":` + zero + `}`,
		"no PCR 11":    `{"12":` + v + `,"15":` + zero + `}`,
		"no PCR 15":    `{"11":` + v + `,"12":` + v + `}`,
	} {
		t.Run(name, func(t *testing.T) {
			_ = afero.WriteFile(fs, "/p.json", []byte(content), 0o644)
			_, err := parse(t, "--measurements", "/p.json", "--insecure-trust-any-ak").Validator(fs, nil)
			if err == nil || !strings.Contains(err.Error(), "does not pin PCRs") || !strings.Contains(err.Error(), "--allow-partial-measurements") {
				t.Fatalf("err = %v, want a refusal naming the missing PCRs and the development flag", err)
			}
			core, logs := observer.New(zapcore.WarnLevel)
			if _, err := parse(t, "--measurements", "/p.json", "--insecure-trust-any-ak", "--allow-partial-measurements").
				Validator(fs, zap.New(core)); err != nil {
				t.Fatalf("with --allow-partial-measurements: %v", err)
			}
			if logs.FilterField(zap.String("event", "partial_measurements")).Len() != 1 {
				t.Errorf("no partial_measurements warning: %v", logs.All())
			}
		})
	}
	_ = afero.WriteFile(fs, "/empty.json", nil, 0o644)
	if _, err := parse(t, "--measurements", "/empty.json", "--insecure-trust-any-ak", "--allow-partial-measurements").Validator(fs, nil); err == nil ||
		!strings.Contains(err.Error(), "is empty") {
		t.Errorf("an empty file: err = %v, want a refusal even in development", err)
	}
}
