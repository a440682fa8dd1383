package attestationflags

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/spf13/afero"
)

// loadPinnedAKs reads every PEM "PUBLIC KEY" block of path (as
// `tpm-provision --ak-pub-out` writes them). Pinning is the AK trust for
// clouds that document no AK certificate (AWS NitroTPM, OpenStack;
// docs/providers.md).
func loadPinnedAKs(fs afero.Fs, path string) ([]crypto.PublicKey, error) {
	raw, err := afero.ReadFile(fs, path)
	if err != nil {
		return nil, fmt.Errorf("reading --ak-pins: %w", err)
	}
	var keys []crypto.PublicKey
	for {
		var block *pem.Block
		block, raw = pem.Decode(raw)
		if block == nil {
			break
		}
		if block.Type != "PUBLIC KEY" {
			continue
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("--ak-pins %s: %w", path, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("--ak-pins %s holds no PEM PUBLIC KEY", path)
	}
	return keys, nil
}
