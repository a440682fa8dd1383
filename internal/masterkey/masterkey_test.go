package masterkey

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"os"
	"strings"
	"testing"

	"github.com/spf13/afero"
)

func TestDerivationsFollowTheContract(t *testing.T) {
	m := MasterSecret{Key: bytes.Repeat([]byte{1}, 32), Salt: bytes.Repeat([]byte{2}, 32)}
	uuid := "0F0E0D0C-0000-4000-8000-000000000001"
	disk, err := m.DiskKey(uuid)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hkdf.Key(sha256.New, m.Key, m.Salt, "key-"+strings.ToLower(uuid), 32)
	if !bytes.Equal(disk, want) {
		t.Fatal("disk key is not HKDF(key, salt, key-<lowercase uuid>)")
	}
	lower, _ := m.DiskKey(strings.ToLower(uuid))
	if !bytes.Equal(disk, lower) {
		t.Fatal("disk key depends on the UUID's case")
	}
	other, _ := m.DiskKey("0f0e0d0c-0000-4000-8000-000000000002")
	if bytes.Equal(disk, other) {
		t.Fatal("two disks share a key")
	}
	secret, _ := m.MeasurementSecret()
	salt, _ := m.MeasurementSalt()
	id, err := ClusterID(secret, salt)
	if err != nil {
		t.Fatal(err)
	}
	wantID, _ := hkdf.Key(sha256.New, secret, salt, "key-clusterID", 32)
	if !bytes.Equal(id, wantID) || bytes.Equal(secret, salt) {
		t.Fatal("cluster ID derivation is wrong")
	}
	if _, err := m.DiskKey(""); err == nil {
		t.Fatal("empty UUID accepted")
	}
}

func TestSaveLoadRefusesOverwriteAndBadFiles(t *testing.T) {
	fs := afero.NewMemMapFs()
	m, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Save(fs, "/ms.json"); err != nil {
		t.Fatal(err)
	}
	if info, _ := fs.Stat("/ms.json"); info.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", info.Mode())
	}
	if err := m.Save(fs, "/ms.json"); err == nil {
		t.Fatal("overwrote an existing master secret")
	}
	back, err := Load(fs, "/ms.json")
	if err != nil || !bytes.Equal(back.Key, m.Key) || !bytes.Equal(back.Salt, m.Salt) {
		t.Fatalf("round trip: %v", err)
	}
	short := `{"key":"` + base64.StdEncoding.EncodeToString([]byte("short")) + `","salt":"` + base64.StdEncoding.EncodeToString(m.Salt) + `"}`
	for name, content := range map[string]string{"garbage": "{", "short key": short, "empty": "{}"} {
		_ = afero.WriteFile(fs, "/bad.json", []byte(content), 0o600)
		if _, err := Load(fs, "/bad.json"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Load(fs, "/missing.json"); !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("missing file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
