package setup

import (
	"fmt"
	"os/exec"

	"golang.org/x/sys/unix"
)

// SystemMounter mounts with mount(2) and formats with mke2fs. It needs a
// kernel with the mapped device, so its behaviour is proven in the VM suite
// (test/, first-boot and rejoin scenarios).
type SystemMounter struct{}

// MakeFilesystem creates ext4 with 4096-byte blocks (the LUKS2 sector size;
// mke2fs would choose 1 KiB blocks on small devices, which ext4 then refuses
// to mount on a 4096-byte-sector device).
func (SystemMounter) MakeFilesystem(device string) error {
	for _, tool := range []string{"mkfs.ext4", "mke2fs"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		args := []string{"-q", "-F", "-b", "4096", device}
		if tool == "mke2fs" {
			args = append([]string{"-t", "ext4"}, args...)
		}
		if out, err := exec.Command(path, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", tool, err, out)
		}
		return nil
	}
	return fmt.Errorf("no mkfs.ext4 or mke2fs in PATH")
}

// Mount mounts device (ext4) on target.
func (SystemMounter) Mount(device, target string, readOnly bool) error {
	var flags uintptr = unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(device, target, "ext4", flags, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", device, target, err)
	}
	return nil
}

// Unmount unmounts target after syncing it.
func (SystemMounter) Unmount(target string) error {
	unix.Sync()
	if err := unix.Unmount(target, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}
