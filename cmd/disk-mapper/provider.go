package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"github.com/diskmapper/disk-mapper/cloud"
	"github.com/diskmapper/disk-mapper/cloud/aws"
	"github.com/diskmapper/disk-mapper/cloud/azure"
	"github.com/diskmapper/disk-mapper/cloud/gcp"
	"github.com/diskmapper/disk-mapper/cloud/openstack"
	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/google/go-tpm/tpm2"
	"go.uber.org/zap"
)

// providerQEMU keeps the behaviour from before there were providers: state
// disk /dev/vda, endpoints from a static list or the /self+/peers API.
const providerQEMU = "qemu"

func addProviderFlags(fs *flag.FlagSet, o *options) {
	fs.IntVar(&o.azureLUN, "azure-lun", 0, "azure: LUN of the state data disk (/dev/disk/azure/scsi1/lun<N>)")
	fs.StringVar(&o.akCertNVIndex, "ak-cert-nv-index", "", "TPM NV index of the AK certificate, e.g. 0x01C101D0 (default: the cloud's documented index, else 0x01000D30)")
}

// resolveProviderFlags checks the provider and, unless --state-disk was
// given, makes the provider's disk the state disk.
func resolveProviderFlags(fs *flag.FlagSet, o *options) error {
	switch o.cloudProvider {
	case providerQEMU, gcp.Name, aws.Name, openstack.Name:
	case azure.Name:
		if o.azureLUN < 0 || o.azureLUN > azure.MaxLUN {
			return fmt.Errorf("--azure-lun %d is not in 0–%d", o.azureLUN, azure.MaxLUN)
		}
	default:
		return fmt.Errorf("--cloud-provider %q: want gcp, aws, azure, openstack or qemu", o.cloudProvider)
	}
	if _, err := akCertIndex(*o); err != nil {
		return err
	}
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "state-disk" })
	if !set {
		o.stateDisk = providerStateDisk(*o)
	}
	return nil
}

func providerStateDisk(o options) string {
	switch o.cloudProvider {
	case gcp.Name:
		return gcp.StateDisk
	case aws.Name:
		return aws.StateDisk
	case azure.Name:
		return azure.StateDisk(o.azureLUN)
	case openstack.Name:
		return openstack.StateDisk
	}
	return constants.DefaultStateDisk
}

// newProvider returns the cloud provider's metadata client (nil for qemu).
func newProvider(o options) (cloud.Provider, error) {
	var (
		p   cloud.Provider
		err error
	)
	switch o.cloudProvider {
	case gcp.Name:
		p, err = gcp.New(o.metadataURL, 0)
	case aws.Name:
		p, err = aws.New(o.metadataURL, 0)
	case azure.Name:
		p, err = azure.New(o.metadataURL, o.azureLUN, 0)
	case openstack.Name:
		p, err = openstack.New(o.metadataURL, 0)
	default:
		return nil, nil
	}
	if err != nil {
		// Never a typed nil in the interface.
		return nil, fmt.Errorf("--cloud-provider %s: %w", o.cloudProvider, err)
	}
	return p, nil
}

// akCertIndex is --ak-cert-nv-index, else the provider's documented index.
func akCertIndex(o options) (tpm2.TPMHandle, error) {
	if o.akCertNVIndex == "" {
		return attestation.CloudAKCertNVIndex(o.cloudProvider), nil
	}
	v, err := strconv.ParseUint(o.akCertNVIndex, 0, 32)
	// NV indices are handles 0x01xxxxxx (TPM 2.0 Part 2, TPM_HT_NV_INDEX).
	if err != nil || v>>24 != 0x01 {
		return 0, fmt.Errorf("--ak-cert-nv-index %q is not an NV index (0x01000000–0x01FFFFFF)", o.akCertNVIndex)
	}
	return tpm2.TPMHandle(v), nil
}

// newTPMIssuer is the TPM issuer reading the AK certificate at the
// provider's index.
func newTPMIssuer(o options, open attestation.OpenFunc, log *zap.Logger) (attestation.Issuer, error) {
	idx, err := akCertIndex(o)
	if err != nil {
		return nil, err
	}
	return attestation.NewTPMIssuerAt(open, log, idx)
}

// logProvider says on the console what the provider decided.
func logProvider(o options, log *zap.Logger) {
	idx, _ := akCertIndex(o)
	log.Info("Cloud provider", zap.String("cloudProvider", o.cloudProvider), zap.String("stateDisk", o.stateDisk),
		zap.String("akCertNVIndex", fmt.Sprintf("%#x", uint32(idx))))
}

// startDiskHelper does what a cloud image's udev rules would when they are
// missing: on AWS it links /dev/sdb to the EBS NVMe namespace attached under
// that name (cloud/aws StateDiskLinker), while setup waits for the path. The
// returned stop ends it and waits.
func startDiskHelper(ctx context.Context, o options, log *zap.Logger) (stop func()) {
	if o.cloudProvider != aws.Name || o.stateDisk != aws.StateDisk {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		aws.StateDiskLinker{Link: aws.StateDisk}.Run(ctx, func(target string, err error) {
			if err != nil {
				log.Warn("Cannot link the state disk", zap.String("disk", aws.StateDisk), zap.Error(err))
				return
			}
			log.Info("Linked the state disk to its EBS NVMe device", zap.String("disk", aws.StateDisk), zap.String("device", target))
		})
	}()
	return func() { cancel(); <-done }
}
