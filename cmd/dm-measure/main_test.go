package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/measure"
)

// imageTree is a minimal image: /init, the daemon, a config dir.
func imageTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range map[string]string{
		"init":                    "#!/bin/busybox sh\n",
		"bin/disk-mapper":         "the daemon",
		"etc/disk-mapper/ca.pem":  "-----BEGIN CERTIFICATE-----\n",
		"etc/default/disk-mapper": "DISK_MAPPER_ARGS=--integrity=true\n",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func expectedJSON(t *testing.T, root, cmdline string) attestation.Measurements {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run([]string{"expected", "-root", root, "-cmdline", cmdline}, &out, &errOut); code != 0 {
		t.Fatalf("expected: exit %d: %s", code, errOut.String())
	}
	var m attestation.Measurements
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("expected printed %q: %v", out.String(), err)
	}
	return m
}

var errExecuted = errors.New("exec called (test)")

// What dm-measure boot leaves in a real TPM is what dm-measure expected
// predicts from the image tree and the command line alone, and it then
// runs exactly the measured argv and environment.
func TestBootLeavesTheExpectedPCRsThenRunsWhatItMeasured(t *testing.T) {
	root := imageTree(t)
	cmdline := "console=ttyS0 quiet dm.attestation=tpm dm.integrity=false disk_mapper.join_endpoints=10.0.2.100 dm.read=x"
	cmdlineFile := filepath.Join(t.TempDir(), "cmdline")
	if err := os.WriteFile(cmdlineFile, []byte(cmdline+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	flags, actions := measure.SplitCmdline(cmdline)
	argv := append([]string{measure.DaemonPath}, flags...)

	tpm := attestationtest.StartSwTPM(t, "")
	var ranPath string
	var ranArgv, ranEnv []string
	fakeExec := func(p string, a, e []string) error {
		ranPath, ranArgv, ranEnv = p, a, e
		return errExecuted
	}
	var stderr bytes.Buffer
	args := append([]string{"-tpm", tpm.ServerPath, "-cmdline", cmdlineFile, "-root", root, "--"}, argv...)
	if code := boot(args, &stderr, fakeExec); code != 127 { // the fake exec "fails" after running
		t.Fatalf("boot: exit %d: %s", code, stderr.String())
	}
	if ranPath != filepath.Join(root, measure.DaemonPath) || !reflect.DeepEqual(ranArgv, argv) || !reflect.DeepEqual(ranEnv, measure.DaemonEnv) {
		t.Fatalf("ran %s %q env %q, want %q env %q", ranPath, ranArgv, ranEnv, argv, measure.DaemonEnv)
	}
	if n := strings.Count(stderr.String(), `"event":"measured"`); n != 8 {
		t.Errorf("%d measured lines, want 8:\n%s", n, stderr.String())
	}

	tc, err := tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	got, err := attestation.ReadPCRs(tc, constants.RequiredPCRs())
	tc.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := expectedJSON(t, root, cmdline)
	for _, p := range constants.RequiredPCRs() {
		if !bytes.Equal(got[p], want[p]) {
			t.Errorf("PCR %d: TPM %x, expected %x", p, got[p], want[p])
		}
	}

	// The test actions, measured after the daemon, extend PCR 12 once more.
	if code := run(append([]string{"actions", "-tpm", tpm.ServerPath, "--"}, actions...), &bytes.Buffer{}, &stderr); code != 0 {
		t.Fatalf("actions: exit %d: %s", code, stderr.String())
	}
	tc, err = tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	after, err := attestation.ReadPCRs(tc, []uint32{constants.PCRConfig})
	tc.Close()
	if err != nil {
		t.Fatal(err)
	}
	e, _ := measure.TestActionsEvent([]string{"read=x"})
	wantAfter := sha256.Sum256(append(append([]byte{}, want[constants.PCRConfig]...), e.Digest()...))
	if !bytes.Equal(after[constants.PCRConfig], wantAfter[:]) {
		t.Errorf("PCR 12 after the actions = %x, want %x", after[constants.PCRConfig], wantAfter)
	}
}

// A measurement that cannot be made runs nothing: an unmeasured daemon
// would leave PCRs that lie about what runs.
func TestBootRunsNothingWhenItCannotMeasure(t *testing.T) {
	root := imageTree(t)
	cmdlineFile := filepath.Join(t.TempDir(), "cmdline")
	_ = os.WriteFile(cmdlineFile, []byte("dm.integrity=false\n"), 0o644)
	ran := false
	fakeExec := func(string, []string, []string) error { ran = true; return errExecuted }
	for name, args := range map[string][]string{
		"no TPM":         {"-tpm", filepath.Join(t.TempDir(), "none"), "-cmdline", cmdlineFile, "-root", root, "--", measure.DaemonPath},
		"no daemon file": {"-tpm", "/dev/null", "-cmdline", cmdlineFile, "-root", root, "--", "/bin/absent"},
		"no cmdline":     {"-cmdline", filepath.Join(t.TempDir(), "none"), "-root", root, "--", measure.DaemonPath},
		"relative argv0": {"-cmdline", cmdlineFile, "-root", root, "--", "bin/disk-mapper"},
	} {
		var stderr bytes.Buffer
		if code := boot(args, &stderr, fakeExec); code != exitMeasureFailed || ran {
			t.Errorf("%s: exit %d, ran %v, want %d and nothing run", name, code, ran, exitMeasureFailed)
		}
		if !strings.Contains(stderr.String(), `"event":"measure_failed"`) {
			t.Errorf("%s: no measure_failed line: %s", name, stderr.String())
		}
	}
}

// One flag added or changed on the command line changes PCR 12 and only
// PCR 12, and so does any kernel parameter (rdinit= would replace the
// measuring init); only the test actions, measured after the daemon,
// change nothing.
func TestExpectedFollowsTheDaemonsConfiguration(t *testing.T) {
	root := imageTree(t)
	base := "console=ttyS0 dm.attestation=tpm dm.integrity=true"
	m := expectedJSON(t, root, base)
	if len(m) != 3 {
		t.Fatalf("expected %v, want PCRs 11, 12, 15", m)
	}
	for name, cmdline := range map[string]string{
		"flag added":          base + " dm.key-handover-file=/run/disk-mapper/x",
		"flag changed":        "console=ttyS0 dm.attestation=tpm dm.integrity=false",
		"flags reordered":     "console=ttyS0 dm.integrity=true dm.attestation=tpm",
		"endpoints on kernel": base + " disk_mapper.join_endpoints=10.0.2.1",
		"kernel parameter":    base + " panic=-1",
		"rdinit":              base + " rdinit=/bin/sh",
		"hidden in quotes":    base + ` x="y dm.write=z"`,
	} {
		other := expectedJSON(t, root, cmdline)
		if bytes.Equal(other[12], m[12]) || !bytes.Equal(other[11], m[11]) {
			t.Errorf("%s: PCR 12 %x (base %x), PCR 11 %x (base %x): want only 12 to differ", name, other[12], m[12], other[11], m[11])
		}
	}
	if other := expectedJSON(t, root, base+" dm.write=a:b dm.pcr=15"); !bytes.Equal(other[12], m[12]) {
		t.Error("test actions changed PCR 12 before the daemon")
	}
	if err := os.WriteFile(filepath.Join(root, "bin/disk-mapper"), []byte("another daemon"), 0o755); err != nil {
		t.Fatal(err)
	}
	if other := expectedJSON(t, root, base); bytes.Equal(other[11], m[11]) {
		t.Error("another daemon binary left PCR 11 unchanged")
	}
}

func TestBadInput(t *testing.T) {
	root := imageTree(t)
	for _, args := range [][]string{
		nil,
		{"frobnicate"},
		{"expected"},
		{"expected", "-root", filepath.Join(root, "absent")},
		{"boot"},
	} {
		if code := run(args, &bytes.Buffer{}, &bytes.Buffer{}); code == 0 {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}
