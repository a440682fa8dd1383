package vmtest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// ImageSpec says what goes into a test initramfs (image/mkinitramfs.sh).
type ImageSpec struct {
	// DiskMapper is the binary the init runs as /bin/disk-mapper.
	DiskMapper string
	// DMMeasure is optional; without it the init does not measure into PCR 11.
	DMMeasure string
	// ConfigDir is optional, copied to /etc/disk-mapper/ in the image.
	ConfigDir string
	// Out is the cpio path; measurements.json is written beside it.
	Out string
}

// Image is a built test initramfs.
type Image struct {
	Initrd string
	// Measurements are the expected PCR values ("11", "15") as lowercase hex.
	Measurements map[string]string
	// Measured is true when the image's init measures disk-mapper into PCR 11.
	Measured bool
}

// FetchKernel runs image/fetch-kernel.sh (idempotent: milliseconds when
// cached in build/kernel) and returns the vmlinux path.
func FetchKernel(t testing.TB) (string, error) {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	if err := runLogged(t, root, nil, filepath.Join(root, "image", "fetch-kernel.sh")); err != nil {
		return "", err
	}
	return filepath.Join(root, "build", "kernel", "vmlinux"), nil
}

// BuildInitrd runs image/mkinitramfs.sh for spec (needs FetchKernel first).
func BuildInitrd(t testing.TB, spec ImageSpec) (Image, error) {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		return Image{}, err
	}
	args := []string{filepath.Join(root, "image", "mkinitramfs.sh"), "-o", spec.Out}
	if spec.DMMeasure != "" {
		args = append(args, "-m", spec.DMMeasure)
	}
	if spec.ConfigDir != "" {
		args = append(args, "-c", spec.ConfigDir)
	}
	args = append(args, spec.DiskMapper)
	if err := runLogged(t, root, nil, args...); err != nil {
		return Image{}, err
	}
	img := Image{Initrd: spec.Out, Measured: spec.DMMeasure != ""}
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(spec.Out), "measurements.json"))
	if err != nil {
		return Image{}, err
	}
	if err := json.Unmarshal(raw, &img.Measurements); err != nil {
		return Image{}, fmt.Errorf("measurements.json: %w", err)
	}
	return img, nil
}

// BuildGo builds the main package pkg (e.g. "./cmd/disk-mapper", relative
// to the module root) into out, with extra environment (e.g. "CGO_ENABLED=0").
func BuildGo(t testing.TB, pkg, out string, env ...string) error {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	return runLogged(t, root, env, goBin, "build", "-o", out, pkg)
}

func runLogged(t testing.TB, dir string, env []string, argv ...string) error {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", filepath.Base(argv[0]), err, out)
	}
	if len(out) > 0 {
		t.Logf("%s: %s", filepath.Base(argv[0]), out)
	}
	return nil
}
