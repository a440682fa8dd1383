package vmtest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/measure"
)

// ImageSpec says what goes into a test initramfs (image/mkinitramfs.sh).
type ImageSpec struct {
	// DiskMapper is the binary the init runs as /bin/disk-mapper.
	DiskMapper string
	// DMMeasure is the measurer the init runs the daemon through (required).
	DMMeasure string
	// ConfigDir is optional, copied to /etc/disk-mapper/ in the image.
	ConfigDir string
	// Params are the extra kernel parameters (Config.Cmdline) of the boot
	// measurements.json is for: mkinitramfs.sh -p gets the whole command
	// line Boot gives QEMU with them. Image.Expected computes any other boot's.
	Params []string
	// Out is the cpio path; measurements.json is written beside it.
	Out string
}

// Image is a built test initramfs.
type Image struct {
	Initrd string
	// Root is the image tree the cpio was made of (OUT-root/).
	Root string
	// Measurements are measurements.json: the expected PCR values ("11",
	// "12", "15") as lowercase hex of a boot with ImageSpec.Params.
	Measurements map[string]string
}

// Expected is what a boot of img with the extra kernel parameters cmdline
// (Config.Cmdline) shows in PCRs 11, 12 and 15 while it asks for keys,
// computed by the code dm-measure runs in the guest (internal/measure),
// on the kernel command line Boot gives QEMU.
func (img Image) Expected(cmdline []string) (attestation.Measurements, error) {
	events, err := measure.ExpectedBoot(img.Root, KernelCmdline(cmdline)).Events()
	if err != nil {
		return nil, err
	}
	return measure.Expected(events), nil
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
	args := []string{filepath.Join(root, "image", "mkinitramfs.sh"), "-o", spec.Out, "-m", spec.DMMeasure,
		"-p", KernelCmdline(spec.Params)}
	if spec.ConfigDir != "" {
		args = append(args, "-c", spec.ConfigDir)
	}
	args = append(args, spec.DiskMapper)
	if err := runLogged(t, root, nil, args...); err != nil {
		return Image{}, err
	}
	img := Image{Initrd: spec.Out, Root: strings.TrimSuffix(spec.Out, ".cpio") + "-root"}
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(spec.Out), "measurements.json"))
	if err != nil {
		return Image{}, err
	}
	if err := json.Unmarshal(raw, &img.Measurements); err != nil {
		return Image{}, fmt.Errorf("measurements.json: %w", err)
	}
	return img, nil
}

// ImageBuildFlags are the go build flags of every binary in an image
// (image/image.mk's GO_IMAGE_FLAGS): no symbol table or DWARF (-s -w).
// dm-measure hashes the daemon at every boot, so its size is boot time
// under TCG: 20 MB unstripped, 14 MB stripped. Link flags only: a compile
// flag such as -trimpath would compile every package a second time for
// the tools built beside the image (+25 s on a fresh `make demo`).
var ImageBuildFlags = []string{"-ldflags=-s -w"}

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
	argv := append(append([]string{goBin, "build"}, ImageBuildFlags...), "-o", out, pkg)
	return runLogged(t, root, env, argv...)
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

// RunLogged runs argv in dir, logging its output, and fails with the output.
func RunLogged(t testing.TB, dir string, argv ...string) error {
	t.Helper()
	return runLogged(t, dir, nil, argv...)
}
