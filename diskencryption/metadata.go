package diskencryption

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// metadata is the LUKS2 JSON area as libcryptsetup dumps it, split into its
// sections and kept raw, so that the allow-list can see every field.
type metadata struct {
	top      map[string]json.RawMessage
	keyslots map[string]json.RawMessage
	tokens   map[string]json.RawMessage
	segments map[string]json.RawMessage
	digests  map[string]json.RawMessage
	config   map[string]json.RawMessage
}

func parseMetadata(dump string) (*metadata, error) {
	m := &metadata{}
	if err := decodeStrict([]byte(dump), &m.top); err != nil {
		return nil, fmt.Errorf("parsing LUKS2 JSON metadata: %w", err)
	}
	for name, dst := range map[string]*map[string]json.RawMessage{
		"keyslots": &m.keyslots, "tokens": &m.tokens, "segments": &m.segments,
		"digests": &m.digests, "config": &m.config,
	} {
		raw, ok := m.top[name]
		if !ok {
			return nil, fmt.Errorf("LUKS2 JSON metadata lacks %q", name)
		}
		if err := decodeStrict(raw, dst); err != nil {
			return nil, fmt.Errorf("parsing LUKS2 JSON metadata %q: %w", name, err)
		}
	}
	return m, nil
}

// decodeStrict decodes JSON and refuses trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

// stateToken finds our token. It returns id -1 and StateNone when there is
// none, and an error when there are several or ours is malformed: a header
// with a doubtful state must not be treated as redoable.
func (m *metadata) stateToken() (int, State, error) {
	id, state := -1, StateNone
	for _, name := range sortedKeys(m.tokens) {
		var head struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(m.tokens[name], &head); err != nil {
			return -1, StateNone, fmt.Errorf("token %s: %w", name, err)
		}
		if head.Type != constants.LUKSTokenType {
			continue
		}
		if id >= 0 {
			return -1, StateNone, fmt.Errorf("several %s tokens (%d and %s)", constants.LUKSTokenType, id, name)
		}
		n, err := strconv.Atoi(name)
		if err != nil {
			return -1, StateNone, fmt.Errorf("token id %q is not a number", name)
		}
		var tok stateToken
		dec := json.NewDecoder(bytes.NewReader(m.tokens[name]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&tok); err != nil {
			return -1, StateNone, fmt.Errorf("token %s (%s): %w", name, constants.LUKSTokenType, err)
		}
		if !tok.State.valid() {
			return -1, StateNone, fmt.Errorf("token %s (%s): unknown state %q", name, constants.LUKSTokenType, tok.State)
		}
		if len(tok.Keyslots) != 0 {
			return -1, StateNone, fmt.Errorf("token %s (%s): bound to keyslots %v, want none", name, constants.LUKSTokenType, tok.Keyslots)
		}
		id, state = n, tok.State
	}
	return id, state, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
