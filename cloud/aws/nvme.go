package aws

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Nitro instances an EBS volume is an NVMe namespace (/dev/nvmeXn1), and
// the block-device-mapping name it was attached as ("sdb", "/dev/sdb", or
// "xvdb") is only in the vendor-specific area of the controller's Identify
// data: the first 32 bytes at offset 3072, space padded
// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/nvme-ebs-volumes.html;
// amazon-ec2-utils' ebsnvme-id reads the same struct, and Constellation's
// aws-nvme-disk reads it with `nvme amzn id-ctrl -b | tail -c +3073 | head -c 32`).
// StateDiskLinker does what their udev rule or script does, so an image
// without either still finds its disk.

const (
	identifySize = 4096
	// Offsets in the Identify Controller data structure (NVMe base spec
	// §5.15.2.1): model number 24–63, vendor specific 3072–4095.
	modelOffset, modelLen = 24, 40
	vsOffset, bdevLen     = 3072, 32
	// ebsModel is the model number of EBS volumes (instance-store NVMe
	// disks say "Amazon EC2 NVMe Instance Storage" and are never the
	// state disk).
	ebsModel = "Amazon Elastic Block Store"
)

// ebsDeviceName returns the mapping name an EBS Identify Controller page
// carries ("sdb"), or "" if the page is not an EBS volume's.
func ebsDeviceName(page []byte) string {
	if len(page) < identifySize {
		return ""
	}
	model := strings.TrimRight(string(page[modelOffset:modelOffset+modelLen]), " \x00")
	if model != ebsModel {
		return ""
	}
	name := string(bytes.TrimRight(page[vsOffset:vsOffset+bdevLen], " \x00"))
	name = strings.TrimPrefix(name, "/dev/")
	for i := 0; i < len(name); i++ {
		if c := name[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return "" // not a device name: ignore rather than link to it
		}
	}
	return name
}

// sameDisk: AWS maps "sdb" as "xvdb" on some AMIs; both mean the state disk.
func sameDisk(mapped, want string) bool {
	return mapped == want || "xv"+strings.TrimPrefix(want, "s") == mapped && strings.HasPrefix(want, "sd")
}

// nvmeAdminCmd is struct nvme_admin_cmd (= nvme_passthru_cmd) of
// <linux/nvme_ioctl.h>: 72 bytes.
type nvmeAdminCmd struct {
	opcode      uint8
	flags       uint8
	rsvd1       uint16
	nsid        uint32
	cdw2, cdw3  uint32
	metadata    uint64
	addr        uint64
	metadataLen uint32
	dataLen     uint32
	cdw10       uint32
	cdw11       uint32
	cdw12       uint32
	cdw13       uint32
	cdw14       uint32
	cdw15       uint32
	timeoutMs   uint32
	result      uint32
}

// nvmeIoctlAdminCmd is _IOWR('N', 0x41, struct nvme_admin_cmd).
const nvmeIoctlAdminCmd = 0xC0484E41

// identifyController reads the Identify Controller page (opcode 0x06,
// CNS 1) of the NVMe device at dev.
func identifyController(dev string) ([]byte, error) {
	f, err := os.Open(dev)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The kernel writes into addr during the ioctl: the buffer must not be
	// Go memory that a stack copy could move, so it is an anonymous mapping.
	page, err := unix.Mmap(-1, 0, identifySize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(page)
	cmd := nvmeAdminCmd{
		opcode:    0x06,
		addr:      uint64(uintptr(unsafe.Pointer(&page[0]))),
		dataLen:   identifySize,
		cdw10:     1,
		timeoutMs: 1000,
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), nvmeIoctlAdminCmd, uintptr(unsafe.Pointer(&cmd))); errno != 0 {
		return nil, fmt.Errorf("NVMe identify %s: %w", dev, errno)
	}
	return bytes.Clone(page), nil
}

// StateDiskLinker creates Link (normally /dev/sdb) pointing at the EBS NVMe
// namespace attached under that name, if the image's udev rules have not.
type StateDiskLinker struct {
	Link string
	// Glob lists candidate namespaces; identify reads a controller page.
	// Defaults: /dev/nvme*n1 and the NVMe admin ioctl.
	Glob     string
	identify func(string) ([]byte, error)
	Interval time.Duration
}

// LinkOnce links Link to the EBS namespace attached under its name, if
// Link is absent and exactly one namespace claims it. It returns the target
// it linked ("" if it made no link).
func (l StateDiskLinker) LinkOnce() (string, error) {
	if _, err := os.Lstat(l.Link); err == nil {
		return "", nil
	}
	glob, identify := l.Glob, l.identify
	if glob == "" {
		glob = "/dev/nvme*n1"
	}
	if identify == nil {
		identify = identifyController
	}
	devs, _ := filepath.Glob(glob)
	sort.Strings(devs)
	want := filepath.Base(l.Link)
	var found []string
	for _, d := range devs {
		page, err := identify(d)
		if err != nil {
			continue // not (yet) an NVMe device we can ask
		}
		if name := ebsDeviceName(page); name != "" && sameDisk(name, want) {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 0:
		return "", nil
	case 1:
	default:
		// Two volumes claim the name: link neither; the node keeps
		// waiting and says which path it waits for.
		return "", fmt.Errorf("NVMe devices %v all claim to be %s", found, want)
	}
	if err := os.MkdirAll(filepath.Dir(l.Link), 0o755); err != nil {
		return "", err
	}
	if err := os.Symlink(found[0], l.Link); err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", nil // udev was faster
		}
		return "", err
	}
	return found[0], nil
}

// Run calls LinkOnce every Interval (default 1 s) until Link exists or ctx
// ends; report gets the link it made, or each error.
func (l StateDiskLinker) Run(ctx context.Context, report func(target string, err error)) {
	interval := l.Interval
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := os.Lstat(l.Link); err == nil {
			return
		}
		target, err := l.LinkOnce()
		if err != nil || target != "" {
			report(target, err)
		}
		if target != "" {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
