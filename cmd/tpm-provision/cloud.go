package main

import (
	"fmt"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/google/go-tpm/tpm2"
)

// cloudLayout is where --cloud puts the certificate and how far it pads it.
// Azure zero-pads its certificate in a 4096-byte index; swtpm's NV indices
// hold at most 2048 bytes, so the test plays Azure with 2048, which still
// exercises the reader's padding logic.
func cloudLayout(cloud string) (tpm2.TPMHandle, int, error) {
	switch cloud {
	case "", "qemu", "gcp", "aws", "azure", "openstack":
	default:
		return 0, 0, fmt.Errorf("--cloud %q: want gcp, aws, azure, openstack or qemu", cloud)
	}
	idx := attestation.CloudAKCertNVIndex(cloud)
	if idx == attestation.AzureAKCertNVIndex {
		return idx, 2048, nil
	}
	return idx, 0, nil
}
