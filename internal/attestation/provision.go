package attestation

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// AKPublicKey returns the TPM's attestation key, e.g. to pin it in a
// validator.
func AKPublicKey(t transport.TPM) (*ecdsa.PublicKey, error) {
	ak, err := createAK(t)
	if err != nil {
		return nil, err
	}
	defer flush(t, ak.handle.Handle)
	pub, err := tpm2.Pub(ak.public)
	if err != nil {
		return nil, fmt.Errorf("decoding attestation key: %w", err)
	}
	ecPub, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("attestation key is %T, want ECDSA", pub)
	}
	return ecPub, nil
}

// Provision plays the platform (cloud) side: it certifies the TPM's AK with
// the platform CA and stores the DER certificate at AKCertNVIndex, replacing
// an earlier one. It returns the certificate. Validators that trust caCert
// then accept the TPM's documents.
func Provision(t transport.TPM, caCert *x509.Certificate, caKey crypto.Signer) ([]byte, error) {
	ak, err := AKPublicKey(t)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "disk-mapper TPM attestation key"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(20, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}, caCert, ak, caKey)
	if err != nil {
		return nil, fmt.Errorf("issuing AK certificate: %w", err)
	}
	if err := writeAKCertificate(t, der); err != nil {
		return nil, err
	}
	return der, nil
}

var ownerAuth = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}

func writeAKCertificate(t transport.TPM, der []byte) error {
	if len(der) > maxAKCertSize {
		return fmt.Errorf("AK certificate is %d bytes, more than %d", len(der), maxAKCertSize)
	}
	old := tpm2.NVReadPublic{NVIndex: AKCertNVIndex}
	oldPub, err := old.Execute(t)
	switch {
	case err == nil:
		undefine := tpm2.NVUndefineSpace{
			AuthHandle: ownerAuth,
			NVIndex:    tpm2.NamedHandle{Handle: AKCertNVIndex, Name: oldPub.NVName},
		}
		if _, err := undefine.Execute(t); err != nil {
			return fmt.Errorf("removing old AK certificate: %w", err)
		}
	case !isHandleError(err):
		return fmt.Errorf("reading AK certificate NV index: %w", err)
	}
	_, err = tpm2.NVDefineSpace{
		AuthHandle: ownerAuth,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: AKCertNVIndex,
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{
				OwnerWrite: true,
				OwnerRead:  true,
				AuthRead:   true, // anyone may read with the empty index auth
				NoDA:       true,
				NT:         tpm2.TPMNTOrdinary,
			},
			DataSize: uint16(len(der)),
		}),
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("defining AK certificate NV index %#x: %w", uint32(AKCertNVIndex), err)
	}
	pub, err := tpm2.NVReadPublic{NVIndex: AKCertNVIndex}.Execute(t)
	if err != nil {
		return fmt.Errorf("reading AK certificate NV index: %w", err)
	}
	for off := 0; off < len(der); off += nvChunk {
		end := min(off+nvChunk, len(der))
		_, err := tpm2.NVWrite{
			AuthHandle: ownerAuth,
			NVIndex:    tpm2.NamedHandle{Handle: AKCertNVIndex, Name: pub.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: der[off:end]},
			Offset:     uint16(off),
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("writing AK certificate to NV: %w", err)
		}
	}
	return nil
}

// NewPlatformCA creates a self-signed ECDSA P-256 CA that plays the cloud's
// AK-certificate authority in tests and on development machines.
func NewPlatformCA(commonName string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}
