package setup

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/afero"
)

// NodeState is the small JSON file the node keeps on its state disk, read
// back after every unlock.
type NodeState struct {
	// MeasurementSalt is the cluster's measurement salt; with the measurement
	// secret it yields the cluster ID extended into PCR 15.
	MeasurementSalt []byte `json:"measurementSalt"`
}

func readNodeState(fs afero.Fs, path string) (NodeState, error) {
	raw, err := afero.ReadFile(fs, path)
	if err != nil {
		return NodeState{}, fmt.Errorf("reading node state: %w", err)
	}
	var s NodeState
	if err := json.Unmarshal(raw, &s); err != nil {
		return NodeState{}, fmt.Errorf("parsing node state %s: %w", path, err)
	}
	if len(s.MeasurementSalt) == 0 {
		return NodeState{}, errors.New("node state has no measurement salt")
	}
	return s, nil
}

// writeNodeState writes the file and syncs it, so that "initialized" is only
// recorded once the node state is on the disk.
func writeNodeState(fs afero.Fs, path string, s NodeState) error {
	raw, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := fs.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := fs.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(raw); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
