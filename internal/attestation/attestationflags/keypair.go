package attestationflags

import (
	"crypto/tls"
	"fmt"

	"github.com/spf13/afero"
)

// KeyPair loads a PEM certificate (chain) and its private key from two
// files, for the side of an aTLS connection that presents a certificate of
// the cluster's PKI (the JoinService; an operator facing a blank-disk node).
// The key bytes read are cleared after parsing.
func KeyPair(fs afero.Fs, certPath, keyPath string) (tls.Certificate, error) {
	certPEM, err := afero.ReadFile(fs, certPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("reading certificate: %w", err)
	}
	keyPEM, err := afero.ReadFile(fs, keyPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("reading private key: %w", err)
	}
	defer clear(keyPEM)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading certificate %s and key %s: %w", certPath, keyPath, err)
	}
	return cert, nil
}
