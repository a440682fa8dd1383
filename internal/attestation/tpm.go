package attestation

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// QuotedPCRs is the PCR selection every quote covers (SHA-256 bank). PCRs
// 16–23 are resettable or debug PCRs and prove nothing about the boot.
var QuotedPCRs = []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

// AKCertNVIndex is the TPM NV index that holds the DER AK certificate issued
// by the platform CA (owner range, written by Provision / cmd/tpm-provision).
const AKCertNVIndex tpm2.TPMHandle = 0x01000D30

// maxAKCertSize bounds the NV certificate; a P-256 certificate is ~500 bytes
// and swtpm's MAX_NV_INDEX_SIZE is 2048.
const maxAKCertSize = 2048

// nvChunk stays below every TPM's MAX_NV_BUFFER_SIZE (1024 on swtpm).
const nvChunk = 512

// akTemplate is the attestation key: a restricted ECC P-256 ECDSA-SHA256
// signing key created as a primary under the endorsement hierarchy. A
// primary is derived from the hierarchy seed and the template alone, so the
// same TPM yields the same AK on every boot; nothing has to be persisted and
// the AK certificate in NV stays valid. Restricted means the TPM signs only
// digests it computed itself, so it cannot be made to sign a forged
// TPMS_ATTEST.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{
			Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA,
				&tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	}),
}

// attestationKey is a loaded AK; flush it when done.
type attestationKey struct {
	handle tpm2.NamedHandle
	public tpm2.TPMTPublic
	// publicBytes is the marshalled TPMT_PUBLIC that goes into documents.
	publicBytes []byte
}

func createAK(t transport.TPM) (*attestationKey, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(akTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("creating attestation key: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		flush(t, rsp.ObjectHandle)
		return nil, fmt.Errorf("decoding attestation key: %w", err)
	}
	return &attestationKey{
		handle:      tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name},
		public:      *pub,
		publicBytes: tpm2.Marshal(*pub),
	}, nil
}

func flush(t transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(t)
}

// pcrSelection is the SHA-256 bank selection of pcrs.
func pcrSelection(pcrs []uint32) tpm2.TPMLPCRSelection {
	idx := make([]uint, len(pcrs))
	for i, p := range pcrs {
		idx[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(idx...),
	}}}
}

// ReadPCRs reads the SHA-256 bank values of pcrs. A TPM returns at most eight
// digests per TPM2_PCR_Read, so it asks again for what is still missing.
func ReadPCRs(t transport.TPM, pcrs []uint32) (map[uint32][]byte, error) {
	out := make(map[uint32][]byte, len(pcrs))
	for {
		var missing []uint32
		for _, p := range pcrs {
			if _, ok := out[p]; !ok {
				missing = append(missing, p)
			}
		}
		if len(missing) == 0 {
			return out, nil
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection(missing)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("reading PCRs: %w", err)
		}
		got := selectedPCRs(rsp.PCRSelectionOut)
		if len(got) == 0 || len(got) != len(rsp.PCRValues.Digests) {
			return nil, fmt.Errorf("reading PCRs: TPM returned %d values for %d PCRs (SHA-256 bank allocated?)",
				len(rsp.PCRValues.Digests), len(got))
		}
		for i, p := range got {
			out[p] = rsp.PCRValues.Digests[i].Buffer
		}
	}
}

// selectedPCRs lists, in ascending order, the SHA-256 PCRs a selection holds.
func selectedPCRs(sel tpm2.TPMLPCRSelection) []uint32 {
	var pcrs []uint32
	for _, s := range sel.PCRSelections {
		if s.Hash != tpm2.TPMAlgSHA256 {
			continue
		}
		for byteIdx, b := range s.PCRSelect {
			for bit := 0; bit < 8; bit++ {
				if b&(1<<bit) != 0 {
					pcrs = append(pcrs, uint32(byteIdx*8+bit))
				}
			}
		}
	}
	sort.Slice(pcrs, func(i, j int) bool { return pcrs[i] < pcrs[j] })
	return pcrs
}

// pcrDigest is what TPM2_Quote signs over the selection: SHA-256 of the
// selected PCR values concatenated in ascending PCR order.
func pcrDigest(values map[uint32][]byte, pcrs []uint32) []byte {
	h := sha256.New()
	for _, p := range pcrs {
		h.Write(values[p])
	}
	return h.Sum(nil)
}

// ExtendPCR extends digest (32 bytes) into the SHA-256 bank of pcr: the TPM
// sets PCR = SHA-256(PCR || digest).
func ExtendPCR(t transport.TPM, pcr uint32, digest []byte) error {
	if len(digest) != sha256.Size {
		return fmt.Errorf("extending PCR %d: digest is %d bytes, want %d", pcr, len(digest), sha256.Size)
	}
	if pcr > 23 {
		return fmt.Errorf("extending PCR %d: no such PCR", pcr)
	}
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{
			HashAlg: tpm2.TPMAlgSHA256,
			Digest:  digest,
		}}},
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("extending PCR %d: %w", pcr, err)
	}
	return nil
}

// ExtendedValue is the value a PCR holds after the TPM extended each digest
// in order into a PCR that started at zero (what dm-measure -expected and
// ExpectedPCR15 compute).
func ExtendedValue(digests ...[]byte) []byte {
	pcr := make([]byte, sha256.Size)
	for _, d := range digests {
		h := sha256.Sum256(append(pcr, d...))
		pcr = h[:]
	}
	return pcr
}

func isZero(b []byte) bool { return len(b) > 0 && bytes.Equal(b, make([]byte, len(b))) }

// readAKCertificate reads the DER AK certificate from AKCertNVIndex. It
// returns (nil, nil) when the index is not defined.
func readAKCertificate(t transport.TPM) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: AKCertNVIndex}.Execute(t)
	if err != nil {
		if isHandleError(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading AK certificate NV index %#x: %w", uint32(AKCertNVIndex), err)
	}
	nvPub, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("decoding AK certificate NV index: %w", err)
	}
	if nvPub.DataSize > maxAKCertSize {
		return nil, fmt.Errorf("AK certificate NV index holds %d bytes, more than %d", nvPub.DataSize, maxAKCertSize)
	}
	auth := tpm2.AuthHandle{Handle: AKCertNVIndex, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)}
	var der []byte
	for off := uint16(0); off < nvPub.DataSize; {
		n := min(nvPub.DataSize-off, nvChunk)
		rsp, err := tpm2.NVRead{
			AuthHandle: auth,
			NVIndex:    tpm2.NamedHandle{Handle: AKCertNVIndex, Name: pub.NVName},
			Size:       n,
			Offset:     off,
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("reading AK certificate from NV: %w", err)
		}
		der = append(der, rsp.Data.Buffer...)
		off += n
	}
	return der, nil
}

// isHandleError tells whether err says the handle (an NV index) is not there.
func isHandleError(err error) bool { return errors.Is(err, tpm2.TPMRCHandle) }
