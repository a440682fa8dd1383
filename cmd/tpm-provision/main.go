// Command tpm-provision plays the cloud for a (software) TPM: it certifies
// the TPM's attestation key with a platform CA and stores the certificate in
// TPM NV (attestation.AKCertNVIndex), where the node's issuer finds it.
//
//	tpm-provision --new-ca DIR
//	    create a test platform CA: DIR/ca.pem and DIR/ca-key.pem
//	tpm-provision --tpm SOCKET|DEVICE --ca-cert ca.pem --ca-key ca-key.pem [--out ak.pem] [--ak-pub-out ak-pub.pem]
//	    provision the TPM (with --new-ca DIR instead of --ca-cert/--ca-key: the new CA)
//
// For QEMU tests, run swtpm on the VM's state dir with
// `--server type=unixio,path=S --ctrl type=unixio,path=C --flags not-need-init,startup-clear`,
// run tpm-provision --tpm S, stop that swtpm by PID, then start the VM's
// swtpm on the same state dir: NV and the AK survive.
package main

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/diskmapper/disk-mapper/internal/attestation"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tpm-provision:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("tpm-provision", flag.ContinueOnError)
	tpmPath := fs.String("tpm", "", "TPM device (/dev/tpmrm0) or swtpm unix socket")
	caCertPath := fs.String("ca-cert", "", "platform CA certificate (PEM)")
	caKeyPath := fs.String("ca-key", "", "platform CA private key (PEM, PKCS#8 or SEC 1)")
	newCA := fs.String("new-ca", "", "create a test platform CA in this directory (ca.pem, ca-key.pem)")
	out := fs.String("out", "", "also write the AK certificate (PEM) here")
	akPubOut := fs.String("ak-pub-out", "", "also write the AK public key (PEM, PKIX) here, for pinning")
	cloud := fs.String("cloud", "", "play this cloud: write the certificate to its AK certificate NV index (azure, gcp; others: the default index)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	if *newCA != "" {
		if *caCertPath != "" || *caKeyPath != "" {
			return errors.New("--new-ca and --ca-cert/--ca-key exclude each other")
		}
		cert, key, err := createCA(*newCA)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "created platform CA %s\n", filepath.Join(*newCA, "ca.pem"))
		*caCertPath, *caKeyPath = cert, key
		if *tpmPath == "" {
			return nil
		}
	}
	if *tpmPath == "" || *caCertPath == "" || *caKeyPath == "" {
		return errors.New("need --tpm and --ca-cert/--ca-key (or --new-ca)")
	}
	caCert, caKey, err := loadCA(*caCertPath, *caKeyPath)
	if err != nil {
		return err
	}

	t, err := attestation.OpenPath(*tpmPath)()
	if err != nil {
		return err
	}
	defer t.Close()
	idx, pad, err := cloudLayout(*cloud)
	if err != nil {
		return err
	}
	der, err := attestation.ProvisionAt(t, caCert, caKey, idx, pad)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote AK certificate (%d bytes, issuer %q) to NV index %#x\n",
		len(der), caCert.Subject.String(), uint32(idx))
	if *out != "" {
		if err := writePEM(*out, "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
	}
	if *akPubOut != "" {
		ak, err := attestation.AKPublicKey(t)
		if err != nil {
			return err
		}
		spki, err := x509.MarshalPKIXPublicKey(ak)
		if err != nil {
			return err
		}
		if err := writePEM(*akPubOut, "PUBLIC KEY", spki, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func createCA(dir string) (certPath, keyPath string, err error) {
	cert, key, err := attestation.NewPlatformCA("disk-mapper test platform CA")
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	certPath, keyPath = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := writePEM(certPath, "CERTIFICATE", cert.Raw, 0o644); err != nil {
		return "", "", err
	}
	if err := writePEM(keyPath, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

func loadCA(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certDER, err := readPEM(certPath, "CERTIFICATE")
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%s: not a CA certificate", certPath)
	}
	keyDER, err := readPEM(keyPath, "")
	if err != nil {
		return nil, nil, err
	}
	var key any
	if key, err = x509.ParsePKCS8PrivateKey(keyDER); err != nil {
		if key, err = x509.ParseECPrivateKey(keyDER); err != nil {
			return nil, nil, fmt.Errorf("%s: not a PKCS#8 or SEC 1 private key", keyPath)
		}
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: key cannot sign", keyPath)
	}
	return cert, signer, nil
}

// readPEM returns the first PEM block of path (of type want, if set).
func readPEM(path, want string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil || (want != "" && block.Type != want) {
		return nil, fmt.Errorf("%s: no PEM %s block", path, want)
	}
	return block.Bytes, nil
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}
