package aws

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// page builds an Identify Controller page with the given model number and
// vendor-specific device name, space padded as EBS does.
func page(model, bdev string) []byte {
	p := make([]byte, identifySize)
	copy(p[modelOffset:], model+strings.Repeat(" ", modelLen-len(model)))
	copy(p[vsOffset:], bdev+strings.Repeat(" ", bdevLen-len(bdev)))
	return p
}

func TestEBSDeviceName(t *testing.T) {
	for _, tc := range []struct {
		page []byte
		want string
	}{
		{page(ebsModel, "sdb"), "sdb"},
		{page(ebsModel, "/dev/sdb"), "sdb"},
		{page(ebsModel, "xvdb"), "xvdb"},
		{page("Amazon EC2 NVMe Instance Storage", "sdb"), ""},
		{page("QEMU NVMe Ctrl", ""), ""},
		{page(ebsModel, "../../etc"), ""},
		{page(ebsModel, "sd b"), ""},
		{page(ebsModel, "sdb")[:3000], ""},
	} {
		if got := ebsDeviceName(tc.page); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if !sameDisk("xvdb", "sdb") || !sameDisk("sdb", "sdb") || sameDisk("sdc", "sdb") || sameDisk("xvdc", "sdb") {
		t.Error("sameDisk")
	}
}

// The ioctl's ABI: struct nvme_admin_cmd is 72 bytes and the request is
// _IOWR('N', 0x41, struct nvme_admin_cmd).
func TestNVMeIoctlABI(t *testing.T) {
	size := unsafe.Sizeof(nvmeAdminCmd{})
	if size != 72 {
		t.Fatalf("nvme_admin_cmd is %d bytes, want 72", size)
	}
	const iocWrite, iocRead = 1, 2
	want := uint32((iocRead|iocWrite)<<30 | uint32(size)<<16 | 'N'<<8 | 0x41)
	if nvmeIoctlAdminCmd != want {
		t.Fatalf("ioctl %#x, want %#x", nvmeIoctlAdminCmd, want)
	}
	// On something that is not an NVMe device the ioctl fails cleanly.
	f := filepath.Join(t.TempDir(), "not-nvme")
	os.WriteFile(f, make([]byte, 8192), 0o600)
	if _, err := identifyController(f); err == nil {
		t.Fatal("identify on a regular file succeeded")
	}
}

func TestStateDiskLinker(t *testing.T) {
	dir := t.TempDir()
	pages := map[string][]byte{}
	for name, p := range map[string][]byte{
		"nvme0n1": page(ebsModel, "/dev/xvda"), // the root volume
		"nvme1n1": page("Amazon EC2 NVMe Instance Storage", "sdb"),
		"nvme2n1": page(ebsModel, "sdb"),
		"nvme3n1": nil, // identify fails
	} {
		path := filepath.Join(dir, name)
		os.WriteFile(path, nil, 0o600)
		pages[path] = p
	}
	identify := func(d string) ([]byte, error) {
		if pages[d] == nil {
			return nil, errors.New("not ready")
		}
		return pages[d], nil
	}
	l := StateDiskLinker{Link: filepath.Join(dir, "dev", "sdb"), Glob: filepath.Join(dir, "nvme*n1"), identify: identify, Interval: 10 * time.Millisecond}
	var linked string
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	l.Run(ctx, func(target string, err error) {
		if err != nil {
			t.Errorf("report: %v", err)
		}
		linked = target
	})
	if got, _ := os.Readlink(l.Link); got != filepath.Join(dir, "nvme2n1") || linked != got {
		t.Fatalf("link → %q, reported %q", got, linked)
	}
	// An existing link (udev's, or ours) is left alone.
	if target, err := l.LinkOnce(); target != "" || err != nil {
		t.Fatalf("second LinkOnce: %q, %v", target, err)
	}

	// Two volumes claiming the name: no link, an error.
	pages[filepath.Join(dir, "nvme0n1")] = page(ebsModel, "sdb")
	l.Link = filepath.Join(dir, "dev2", "sdb")
	if target, err := l.LinkOnce(); target != "" || err == nil || !strings.Contains(err.Error(), "all claim") {
		t.Fatalf("two claimants: %q, %v", target, err)
	}
	if _, err := os.Lstat(l.Link); err == nil {
		t.Fatal("linked although two volumes claim the name")
	}
}
