package main

import (
	"flag"
	"fmt"

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
	fs.StringVar(&o.keyHandoverFile, "key-handover-file", "", "write the disk key here for systemd-cryptsetup (off by default)")
	fs.StringVar(&o.kernelCmdline, "kernel-cmdline", constants.KernelCmdline, "kernel command line file")
	addProviderFlags(fs, &o)
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
	return o, nil
}
