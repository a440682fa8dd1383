package attestation

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/spf13/afero"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// Measurements are the expected SHA-256 PCR values of an image. The JSON
// form, which the image build emits, maps decimal PCR indices to lowercase
// hex: {"11":"<hex sha256>","15":"00…00"}.
type Measurements map[uint32][]byte

// MarshalJSON writes the {"11":"hex"} form.
func (m Measurements) MarshalJSON() ([]byte, error) { return pcrValues(m).MarshalJSON() }

// UnmarshalJSON reads the {"11":"hex"} form; indices must be 0–23 and values
// 32 bytes.
func (m *Measurements) UnmarshalJSON(b []byte) error {
	var p pcrValues
	if err := p.UnmarshalJSON(b); err != nil {
		return err
	}
	*m = Measurements(p)
	return nil
}

// LoadMeasurements reads a measurements JSON file.
func LoadMeasurements(fs afero.Fs, path string) (Measurements, error) {
	raw, err := afero.ReadFile(fs, path)
	if err != nil {
		return nil, fmt.Errorf("reading measurements: %w", err)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, fmt.Errorf("measurements %s is empty: it must hold the image's expected PCR values", path)
	}
	var m Measurements
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("parsing measurements %s: %w", path, err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("measurements %s: %w", path, err)
	}
	return m, nil
}

// Missing returns the PCRs of required that m does not pin, in order. A
// validator with such measurements accepts whatever the node has in them:
// without PCR 12, say, a node booted with any flags the host likes.
func (m Measurements) Missing(required []uint32) []uint32 {
	var out []uint32
	for _, p := range required {
		if _, ok := m[p]; !ok {
			out = append(out, p)
		}
	}
	return out
}

// check rejects measurements no quote can ever satisfy.
func (m Measurements) check() error {
	for idx, v := range m {
		if !quoted(idx) {
			return fmt.Errorf("PCR %d is not in the quoted selection (PCRs 0–15)", idx)
		}
		if len(v) != 32 {
			return fmt.Errorf("PCR %d: value is %d bytes, want 32", idx, len(v))
		}
		if idx == constants.PCRClusterID && !isZero(v) {
			return fmt.Errorf("PCR %d must be expected as zero: a node asks for keys before it marks itself", idx)
		}
	}
	return nil
}

func quoted(pcr uint32) bool {
	for _, p := range QuotedPCRs {
		if p == pcr {
			return true
		}
	}
	return false
}
