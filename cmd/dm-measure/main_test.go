package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
)

// The value -expected prints is what a real TPM holds after dm-measure
// extended the same files.
func TestExpectedMatchesTPM(t *testing.T) {
	dir := t.TempDir()
	var files []string
	for i, content := range []string{"init", "disk-mapper binary"} {
		p := filepath.Join(dir, string(rune('a'+i)))
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	var out bytes.Buffer
	if err := run(append([]string{"-expected", "-pcr", "11"}, files...), &out); err != nil {
		t.Fatal(err)
	}
	want, err := hex.DecodeString(strings.TrimSpace(out.String()))
	if err != nil || len(want) != 32 {
		t.Fatalf("-expected printed %q", out.String())
	}

	tpm := attestationtest.StartSwTPM(t, "")
	if err := run(append([]string{"-tpm", tpm.ServerPath, "-pcr", "11"}, files...), &bytes.Buffer{}); err != nil {
		t.Fatalf("measure: %v", err)
	}
	tc, err := tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	got, err := attestation.ReadPCRs(tc, []uint32{11})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[11], want) {
		t.Fatalf("TPM PCR 11 = %x, -expected = %x", got[11], want)
	}

	out.Reset()
	if err := run(append([]string{"-expected", "-json", "-pcr", "11"}, files...), &out); err != nil {
		t.Fatal(err)
	}
	var m attestation.Measurements
	if err := json.Unmarshal(out.Bytes(), &m); err != nil || !bytes.Equal(m[11], want) || len(m[15]) != 32 {
		t.Fatalf("-json printed %s (%v)", out.String(), err)
	}
}

func TestBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"-expected"},
		{"-expected", "/does/not/exist"},
		{"-expected", "-pcr", "24", "/etc/hostname"},
		{"-tpm", "/does/not/exist", "/etc/hostname"},
	} {
		if err := run(args, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}
