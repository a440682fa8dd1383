// Package masterkey holds the cluster's master secret and the HKDF-SHA256
// derivations of DESIGN.md §3. The master secret never reaches a node; nodes
// only receive their own disk key, the measurement secret and the
// measurement salt.
package masterkey

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/afero"
)

// SecretSize is the size of every secret and derived key, in bytes.
const SecretSize = 32

// MasterSecret is the file `{"key": base64(32 B), "salt": base64(32 B)}`.
type MasterSecret struct {
	Key  []byte `json:"key"`
	Salt []byte `json:"salt"`
}

// New returns a fresh random master secret.
func New() (MasterSecret, error) {
	m := MasterSecret{Key: make([]byte, SecretSize), Salt: make([]byte, SecretSize)}
	if _, err := rand.Read(m.Key); err != nil {
		return MasterSecret{}, err
	}
	if _, err := rand.Read(m.Salt); err != nil {
		return MasterSecret{}, err
	}
	return m, nil
}

// Load reads and validates a master-secret file.
func Load(fs afero.Fs, path string) (MasterSecret, error) {
	raw, err := afero.ReadFile(fs, path)
	if err != nil {
		return MasterSecret{}, fmt.Errorf("reading master secret: %w", err)
	}
	var m MasterSecret
	if err := json.Unmarshal(raw, &m); err != nil {
		return MasterSecret{}, fmt.Errorf("parsing master secret %s: %w", path, err)
	}
	if len(m.Key) != SecretSize || len(m.Salt) != SecretSize {
		return MasterSecret{}, fmt.Errorf("master secret %s: key and salt must be %d bytes each (got %d and %d)", path, SecretSize, len(m.Key), len(m.Salt))
	}
	return m, nil
}

// Save writes m to path with mode 0600 and refuses to overwrite a file.
func (m MasterSecret) Save(fs afero.Fs, path string) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	f, err := fs.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to overwrite a master secret", path)
		}
		return err
	}
	if _, err := f.Write(raw); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// DiskKey derives the state-disk key of the disk with the given LUKS UUID.
func (m MasterSecret) DiskKey(diskUUID string) ([]byte, error) {
	if diskUUID == "" {
		return nil, errors.New("empty disk UUID")
	}
	return derive(m.Key, m.Salt, "key-"+strings.ToLower(diskUUID))
}

// MeasurementSecret derives the cluster's measurement secret.
func (m MasterSecret) MeasurementSecret() ([]byte, error) {
	return derive(m.Key, m.Salt, "key-measurementSecret")
}

// MeasurementSalt derives the cluster's measurement salt.
func (m MasterSecret) MeasurementSalt() ([]byte, error) {
	return derive(m.Key, m.Salt, "key-measurementSalt")
}

// ClusterID derives the cluster ID a node extends into PCR 15.
func ClusterID(measurementSecret, measurementSalt []byte) ([]byte, error) {
	if len(measurementSecret) == 0 || len(measurementSalt) == 0 {
		return nil, errors.New("measurement secret and salt are required")
	}
	return derive(measurementSecret, measurementSalt, "key-clusterID")
}

func derive(ikm, salt []byte, info string) ([]byte, error) {
	return hkdf.Key(sha256.New, ikm, salt, info, SecretSize)
}
