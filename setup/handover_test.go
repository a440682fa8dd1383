package setup

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/afero"
)

// The key handover write only ever creates a new regular file, mode 0400:
// it never follows a planted link and never writes into an existing file.
func TestHandOverCreatesOnlyANewPrivateFile(t *testing.T) {
	dir := t.TempDir()
	key := []byte("0123456789abcdef0123456789abcdef")
	handOver := func(p string) error {
		m := &Manager{cfg: Config{KeyHandoverFile: p}, fs: afero.NewOsFs()}
		return m.handOver(key)
	}

	fresh := filepath.Join(dir, "state.key")
	if err := handOver(fresh); err != nil {
		t.Fatalf("new file: %v", err)
	}
	if fi, err := os.Lstat(fresh); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o400 {
		t.Fatalf("handover file: %v, %v; want a regular file, mode 0400", fi.Mode(), err)
	}

	target := filepath.Join(dir, "elsewhere")
	if err := os.WriteFile(target, []byte("untouched"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing.key")
	if err := os.WriteFile(existing, []byte("untouched"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]string{"symlink": link, "existing file": existing, "again": fresh} {
		if err := handOver(p); err == nil {
			t.Errorf("%s: written", name)
		}
	}
	for _, p := range []string{target, existing} {
		if b, _ := os.ReadFile(p); string(b) != "untouched" {
			t.Errorf("%s was overwritten", p)
		}
	}
}
