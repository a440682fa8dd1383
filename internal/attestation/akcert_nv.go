package attestation

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// Where clouds document their vTPM's AK certificate. Each provider's
// default (see cmd/disk-mapper --ak-cert-nv-index); AKCertNVIndex stays the
// index of our own provisioning (tpm-provision, QEMU, OpenStack, AWS).
const (
	// AzureAKCertNVIndex holds the DER AK certificate of Azure's vTPM
	// (Trusted Launch and confidential VMs), issued by the "Azure Virtual
	// TPM Root Certificate Authority", for the AK persisted at 0x81000003.
	// The index is 4096 bytes; the certificate is zero-padded. Sources:
	// https://learn.microsoft.com/azure/confidential-computing/guest-attestation-confidential-virtual-machines-design
	// ("vTPM AK Certificate … Issued by Azure") and the index as Microsoft's
	// own test (azure/confidential-computing-cvm-guest-attestation,
	// "NV READ … Index 0x01c101d0 (AK CERT)") and Constellation's
	// internal/attestation/azure/trustedlaunch (tpmAkCertIdx) read it.
	AzureAKCertNVIndex tpm2.TPMHandle = 0x01C101D0
	// GCPAKCertNVIndexECC and GCPAKCertNVIndexRSA hold the AK certificates
	// of a Shielded/Confidential VM's vTPM, issued by Google's EK/AK CA, for
	// the AKs whose templates are at 0x01C10003 / 0x01C10001 (go-tpm-tools
	// client/handles.go: GceAKCertNVIndexECC/RSA,
	// https://cloud.google.com/compute/shielded-vm/docs/retrieving-endorsement-key).
	// Our AK is ECC P-256, so ECC is the default.
	GCPAKCertNVIndexECC tpm2.TPMHandle = 0x01C10002
	GCPAKCertNVIndexRSA tpm2.TPMHandle = 0x01C10000
)

// maxCloudAKCertIndex bounds what is read from a cloud's index: Azure's is
// 4096 bytes (the AK certificate plus zero padding).
const maxCloudAKCertIndex = 4096

// ReadAKCertificateAt reads the DER AK certificate from NV index idx. It
// returns (nil, nil) when the index is not defined. Trailing zero padding
// (Azure pads its 4096-byte index) is cut off at the end of the DER
// certificate; anything else after it is an error.
func ReadAKCertificateAt(t transport.TPM, idx tpm2.TPMHandle) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t)
	if err != nil {
		if isHandleError(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading AK certificate NV index %#x: %w", uint32(idx), err)
	}
	nvPub, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("decoding AK certificate NV index %#x: %w", uint32(idx), err)
	}
	if nvPub.DataSize > maxCloudAKCertIndex {
		return nil, fmt.Errorf("AK certificate NV index %#x holds %d bytes, more than %d", uint32(idx), nvPub.DataSize, maxCloudAKCertIndex)
	}
	auth := tpm2.AuthHandle{Handle: idx, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)}
	var data []byte
	for off := uint16(0); off < nvPub.DataSize; {
		n := min(nvPub.DataSize-off, nvChunk)
		rsp, err := tpm2.NVRead{
			AuthHandle: auth,
			NVIndex:    tpm2.NamedHandle{Handle: idx, Name: pub.NVName},
			Size:       n,
			Offset:     off,
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("reading AK certificate from NV index %#x: %w", uint32(idx), err)
		}
		data = append(data, rsp.Data.Buffer...)
		off += n
	}
	return trimDER(data)
}

// trimDER returns the first DER value of b, which must be followed by
// nothing but zero bytes.
func trimDER(b []byte) ([]byte, error) {
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(b, &raw)
	if err != nil {
		return nil, fmt.Errorf("AK certificate in NV is not DER: %w", err)
	}
	if len(bytes.Trim(rest, "\x00")) != 0 {
		return nil, errors.New("AK certificate in NV is followed by non-zero data")
	}
	return raw.FullBytes, nil
}

// NewTPMIssuerAt is NewTPMIssuer with the AK certificate read from NV index
// idx instead of AKCertNVIndex (a cloud's documented index). Without a
// certificate there the issuer sends none, and validators must pin the AK.
func NewTPMIssuerAt(open OpenFunc, log *zap.Logger, idx tpm2.TPMHandle) (Issuer, error) {
	if log == nil {
		log = zap.NewNop()
	}
	iss, err := NewTPMIssuer(open, log)
	if err != nil || idx == AKCertNVIndex {
		return iss, err
	}
	t, err := open()
	if err != nil {
		return nil, fmt.Errorf("opening TPM: %w", err)
	}
	defer t.Close()
	cert, err := ReadAKCertificateAt(t, idx)
	if err != nil {
		return nil, err
	}
	ti := iss.(*TPMIssuer)
	ti.akCert = cert
	log.Info("AK certificate NV index", logging.Event("ak_cert_nv_index"),
		zap.String("index", fmt.Sprintf("%#x", uint32(idx))), zap.Bool("akCertificate", cert != nil))
	return ti, nil
}

// ProvisionAt is Provision writing to NV index idx, the certificate
// zero-padded to padTo bytes (0: no padding), so that tpm-provision can play
// a cloud: Azure's layout is a padded certificate at AzureAKCertNVIndex.
func ProvisionAt(t transport.TPM, caCert *x509.Certificate, caKey crypto.Signer, idx tpm2.TPMHandle, padTo int) ([]byte, error) {
	if idx == AKCertNVIndex && padTo == 0 {
		return Provision(t, caCert, caKey)
	}
	// Provision writes the certificate to AKCertNVIndex; move it to idx.
	der, err := Provision(t, caCert, caKey)
	if err != nil {
		return nil, err
	}
	if err := undefineNV(t, AKCertNVIndex); err != nil {
		return nil, err
	}
	data := der
	if padTo > len(der) {
		data = append(bytes.Clone(der), make([]byte, padTo-len(der))...)
	}
	if err := writeNV(t, idx, data); err != nil {
		return nil, err
	}
	return der, nil
}

func undefineNV(t transport.TPM, idx tpm2.TPMHandle) error {
	pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t)
	if err != nil {
		if isHandleError(err) {
			return nil
		}
		return fmt.Errorf("reading NV index %#x: %w", uint32(idx), err)
	}
	_, err = tpm2.NVUndefineSpace{AuthHandle: ownerAuth, NVIndex: tpm2.NamedHandle{Handle: idx, Name: pub.NVName}}.Execute(t)
	if err != nil {
		return fmt.Errorf("removing NV index %#x: %w", uint32(idx), err)
	}
	return nil
}

// writeNV (re)defines idx with the same attributes as AKCertNVIndex (owner
// writes, anyone reads with the empty auth) and writes data.
func writeNV(t transport.TPM, idx tpm2.TPMHandle, data []byte) error {
	if err := undefineNV(t, idx); err != nil {
		return err
	}
	_, err := tpm2.NVDefineSpace{
		AuthHandle: ownerAuth,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex:    idx,
			NameAlg:    tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, AuthRead: true, NoDA: true, NT: tpm2.TPMNTOrdinary},
			DataSize:   uint16(len(data)),
		}),
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("defining NV index %#x (%d bytes): %w", uint32(idx), len(data), err)
	}
	pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t)
	if err != nil {
		return fmt.Errorf("reading NV index %#x: %w", uint32(idx), err)
	}
	for off := 0; off < len(data); off += nvChunk {
		end := min(off+nvChunk, len(data))
		_, err := tpm2.NVWrite{
			AuthHandle: ownerAuth,
			NVIndex:    tpm2.NamedHandle{Handle: idx, Name: pub.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
			Offset:     uint16(off),
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("writing NV index %#x: %w", uint32(idx), err)
		}
	}
	return nil
}

// CloudAKCertNVIndex is the AK certificate index of a --cloud-provider
// value: the documented one for Azure and GCP; AWS (NitroTPM) and OpenStack
// document none, so there (and on QEMU) it is our own AKCertNVIndex, which
// only our provisioning fills, and validators pin the AK instead.
func CloudAKCertNVIndex(cloud string) tpm2.TPMHandle {
	switch cloud {
	case "azure":
		return AzureAKCertNVIndex
	case "gcp":
		return GCPAKCertNVIndexECC
	}
	return AKCertNVIndex
}
