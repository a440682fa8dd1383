package joinservice

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// TestCertificates is a throw-away CA, a JoinService certificate and an
// operator client certificate it signed. The CA's private key is never kept:
// nothing else can be signed with it, so leaking the CA certificate into an
// image leaks nothing.
type TestCertificates struct {
	CAPEM   []byte // give to nodes as the cluster CA (aTLS RootCAs)
	CertPEM []byte // --cert of the JoinService
	KeyPEM  []byte // --key of the JoinService (secret)
	// OperatorCertPEM and OperatorKeyPEM are a client certificate for
	// `dmctl recover --client-cert/--client-key`: a node with a blank disk
	// only takes a key from a peer whose certificate chains to the CA.
	OperatorCertPEM []byte
	OperatorKeyPEM  []byte // secret
}

// GenerateTestCertificates creates a CA, a server certificate for hosts
// (IP addresses or DNS names) and an operator client certificate, valid for
// validity. For development and tests; production services and operators
// get certificates from the cluster's PKI.
func GenerateTestCertificates(hosts []string, validity time.Duration) (TestCertificates, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return TestCertificates{}, err
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "disk-mapper JoinService test CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return TestCertificates{}, fmt.Errorf("creating CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return TestCertificates{}, err
	}

	leaf := leafTemplate("disk-mapper JoinService", x509.ExtKeyUsageServerAuth, now, validity)
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			leaf.IPAddresses = append(leaf.IPAddresses, ip)
		} else if h != "" {
			leaf.DNSNames = append(leaf.DNSNames, h)
		}
	}
	certPEM, keyPEM, err := issue(leaf, ca, caKey)
	if err != nil {
		return TestCertificates{}, fmt.Errorf("creating JoinService certificate: %w", err)
	}
	operator := leafTemplate("disk-mapper operator", x509.ExtKeyUsageClientAuth, now, validity)
	operatorCertPEM, operatorKeyPEM, err := issue(operator, ca, caKey)
	if err != nil {
		return TestCertificates{}, fmt.Errorf("creating operator certificate: %w", err)
	}
	return TestCertificates{
		CAPEM:           pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		CertPEM:         certPEM,
		KeyPEM:          keyPEM,
		OperatorCertPEM: operatorCertPEM,
		OperatorKeyPEM:  operatorKeyPEM,
	}, nil
}

// leafTemplate is an end-entity certificate for one purpose (server or
// client authentication), valid from a minute ago for validity.
func leafTemplate(cn string, usage x509.ExtKeyUsage, now time.Time, validity time.Duration) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
}

// issue creates a fresh P-256 key and a certificate for it from template,
// signed by ca, both PEM-encoded.
func issue(template, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	defer clear(keyDER)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand does not fail on supported platforms (Go 1.24+ crashes instead).
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
