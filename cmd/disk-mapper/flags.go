package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

type options struct {
	stateDisk       string
	recoveryAddr    string
	joinEndpoints   string
	metadataURL     string
	attestation     string
	tpmDevice       string
	joinCA          string
	integrity       bool
	cloudProvider   string
	keyHandoverFile string
	kernelCmdline   string
	// azureLUN and akCertNVIndex: see provider.go.
	azureLUN      int
	akCertNVIndex string
	// keyHandoverSocket is the crypttab volume whose systemd-cryptsetup gets
	// the key on the socket-activated socket (handover_socket.go).
	keyHandoverSocket string
}

const (
	attestationTPM = "tpm"
	// attestationDev is for development only: no TPM quote, warns on every use.
	attestationDev = "dev-insecure"
)

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("disk-mapper", flag.ContinueOnError)
	fs.StringVar(&o.stateDisk, "state-disk", constants.DefaultStateDisk, "state disk block device")
	fs.StringVar(&o.recoveryAddr, "recovery-addr", fmt.Sprintf(":%d", constants.RecoveryPort), "RecoveryServer listen address")
	fs.StringVar(&o.joinEndpoints, "join-endpoints", "", "static JoinService endpoints IP:PORT,… (else the kernel command line "+constants.KernelCmdlineJoinEndpoints+"=, else the metadata API)")
	fs.StringVar(&o.metadataURL, "metadata-url", "", "base URL of the metadata service (qemu: the /self, /peers API, none by default; clouds: default http://169.254.169.254)")
	fs.StringVar(&o.attestation, "attestation", attestationTPM, "attestation: tpm, or dev-insecure (development only)")
	fs.StringVar(&o.tpmDevice, "tpm-device", constants.TPMDevice, "TPM device")
	fs.StringVar(&o.joinCA, "join-ca", "", "PEM CA that the JoinService's and every recovery operator's certificate must chain to")
	fs.BoolVar(&o.integrity, "integrity", true, "dm-integrity hmac(sha256) on new disks")
	fs.StringVar(&o.cloudProvider, "cloud-provider", providerQEMU, "cloud provider: gcp, aws, azure, openstack or qemu (state disk, metadata, AK certificate index; docs/providers.md)")
	fs.StringVar(&o.keyHandoverFile, "key-handover-file", "", "write the disk key to this new file for systemd-cryptsetup, a name directly in "+constants.RuntimeDir+"/ (off by default)")
	fs.StringVar(&o.kernelCmdline, "kernel-cmdline", constants.KernelCmdline, "kernel command line file")
	addProviderFlags(fs, &o)
	fs.StringVar(&o.keyHandoverSocket, "key-handover-socket", "", "serve the disk key once on the socket systemd passed (LISTEN_FDS) to systemd-cryptsetup of this crypttab volume, which then maps the disk (off by default)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if err := resolveProviderFlags(fs, &o); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.attestation != attestationTPM && o.attestation != attestationDev {
		return options{}, fmt.Errorf("--attestation must be %q or %q", attestationTPM, attestationDev)
	}
	if err := checkKeyHandoverFile(o.keyHandoverFile, constants.RuntimeDir); err != nil {
		return options{}, err
	}
	if err := checkKeyHandoverSocket(o); err != nil {
		return options{}, err
	}
	return o, nil
}

// checkKeyHandoverFile enforces where the disk key may go: only a new
// file directly in runtimeDir (a tmpfs that dies with the boot). A flag is
// the host's to choose in a test image, and a key written to /dev/ttyS1, to
// a disk or through a link would be the host's to read. The name must be
// the path as given (no "..", "//", "./" to reinterpret it), not the
// daemon's mount point, and nothing may exist there yet: the write itself
// (O_EXCL|O_NOFOLLOW) only ever creates a new regular file.
func checkKeyHandoverFile(p, runtimeDir string) error {
	if p == "" {
		return nil
	}
	refuse := func(why string) error {
		return fmt.Errorf("--key-handover-file %q refused: %s; it must be a new file directly in %s/ (e.g. %s)",
			p, why, runtimeDir, constants.KeyHandoverFile)
	}
	dir, name := filepath.Split(p)
	switch {
	case filepath.Clean(p) != p:
		return refuse("not a clean path")
	case dir != runtimeDir+"/" || name == "" || name == "." || name == "..":
		return refuse("not directly in " + runtimeDir)
	case name == filepath.Base(constants.StateMountPoint):
		return refuse("that is the daemon's mount point")
	}
	if fi, err := os.Lstat(runtimeDir); err == nil && (!fi.IsDir() || fi.Mode()&os.ModeSymlink != 0) {
		return refuse(runtimeDir + " is not a directory")
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return refuse(err.Error())
	}
	if _, err := os.Lstat(p); err == nil {
		return refuse("something already exists there")
	} else if !errors.Is(err, fs.ErrNotExist) {
		return refuse(err.Error())
	}
	return nil
}
