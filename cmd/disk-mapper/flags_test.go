package main

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
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

// The disk key goes only to a new file directly in /run/disk-mapper/: the
// host writes a test image's command line, and any other path (a serial
// port, a disk, a path that resolves elsewhere) is refused before the
// daemon does anything.
func TestKeyHandoverFileOnlyInTheRuntimeDir(t *testing.T) {
	for _, ok := range []string{"", "/run/disk-mapper/state.key", "/run/disk-mapper/x"} {
		if _, err := parseFlags([]string{"--key-handover-file=" + ok}); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"/dev/ttyS1",
		"/dev/vdb",
		"relative.key",
		"/run/disk-mapper",
		"/run/disk-mapper/",
		"/run/disk-mapper/.",
		"/run/disk-mapper/..",
		"/run/disk-mapper/../x",
		"/run/disk-mapper/../../dev/ttyS1",
		"/run/disk-mapper//x",
		"/run/disk-mapper/./x",
		"/run/disk-mapper/sub/x",
		"/run/disk-mapper/state", // the daemon's mount point
		"/run/disk-mapper-other/x",
		"/run/x",
		"//run/disk-mapper/x",
	} {
		_, err := parseFlags([]string{"--key-handover-file=" + bad})
		if err == nil || !strings.Contains(err.Error(), "--key-handover-file") || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%q: err = %v, want a refusal naming --key-handover-file", bad, err)
		}
	}
}

// What is already on disk counts too: a planted link or file at the name,
// or a runtime directory that is a link, is refused at startup.
func TestKeyHandoverFileRefusesLinksAndExistingFiles(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "disk-mapper")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := checkKeyHandoverFile(filepath.Join(dir, "new.key"), dir); err != nil {
		t.Fatalf("a new name in a real directory refused: %v", err)
	}
	if err := os.Symlink("/dev/ttyS1", filepath.Join(dir, "link.key")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "old.key"), nil, 0o400); err != nil {
		t.Fatal(err)
	}
	linkedDir := filepath.Join(base, "linked")
	if err := os.Symlink(t.TempDir(), linkedDir); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string][2]string{
		"symlink at the name":   {filepath.Join(dir, "link.key"), dir},
		"existing file":         {filepath.Join(dir, "old.key"), dir},
		"runtime dir is a link": {filepath.Join(linkedDir, "x.key"), linkedDir},
	} {
		if err := checkKeyHandoverFile(c[0], c[1]); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: err = %v, want a refusal", name, err)
		}
	}
}
