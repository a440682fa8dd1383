package main

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"go.uber.org/zap/zaptest"
)

func TestParseFlagsDefaultsAndRefusals(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.stateDisk != "/dev/vda" || o.recoveryAddr != ":9999" || o.attestation != attestationTPM || !o.integrity || o.keyHandoverFile != "" {
		t.Fatalf("defaults: %+v", o)
	}
	for _, bad := range [][]string{{"--attestation=none"}, {"extra-arg"}, {"--no-such-flag"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// The endpoint source follows the documented order: the flag, else the
// kernel command line, else the metadata API, else none (RecoveryServer only).
func TestEndpointSourceOrder(t *testing.T) {
	dir := t.TempDir()
	withParam := filepath.Join(dir, "cmdline-with")
	without := filepath.Join(dir, "cmdline-without")
	os.WriteFile(withParam, []byte("console=ttyS0 disk_mapper.join_endpoints=10.0.2.100:30090,10.0.2.101\n"), 0o600)
	os.WriteFile(without, []byte("console=ttyS0 quiet\n"), 0o600)
	log := zaptest.NewLogger(t)
	ctx := context.Background()

	cases := []struct {
		name string
		o    options
		want []string // nil: no static list expected
		none bool
	}{
		{"flag wins", options{joinEndpoints: "10.0.0.1:1,10.0.0.2", kernelCmdline: withParam}, []string{"10.0.0.1:1", "10.0.0.2:30090"}, false},
		{"kernel command line", options{kernelCmdline: withParam, metadataURL: "http://127.0.0.1:1"}, []string{"10.0.2.100:30090", "10.0.2.101:30090"}, false},
		{"metadata API", options{kernelCmdline: without, metadataURL: "http://127.0.0.1:1"}, nil, false},
		{"nothing configured", options{kernelCmdline: filepath.Join(dir, "absent")}, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, err := endpointSource(c.o, log)
			if err != nil {
				t.Fatal(err)
			}
			if c.none {
				if src != nil {
					t.Fatalf("got a source %T, want none", src)
				}
				return
			}
			if src == nil {
				t.Fatal("no source")
			}
			if c.want == nil {
				if _, err := src.Endpoints(ctx); err == nil {
					t.Fatal("the metadata source answered without a metadata server")
				}
				return
			}
			got, err := src.Endpoints(ctx)
			if err != nil || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("endpoints %v, %v; want %v", got, err, c.want)
			}
		})
	}
	if _, err := endpointSource(options{joinEndpoints: "not-an-endpoint!"}, log); err == nil {
		t.Fatal("a malformed --join-endpoints was accepted")
	}
}
