package diskencryption

import (
	"encoding/json"
	"fmt"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// Kind is what a device holds, as far as a read-only probe can tell.
type Kind int

const (
	// KindBlank: first and last MiB zero, no signature; safe to format.
	KindBlank Kind = iota
	// KindLUKS2: a LUKS2 header libcryptsetup loads.
	KindLUKS2
	// KindForeign: anything else. Never formatted; Probe.Reason says why.
	KindForeign
)

func (k Kind) String() string {
	switch k {
	case KindBlank:
		return "blank"
	case KindLUKS2:
		return "LUKS2"
	case KindForeign:
		return "foreign"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// State is how far the lifecycle of a disk got, recorded in our LUKS2 token.
type State string

const (
	// StateNone: no state token.
	StateNone State = ""
	// StateFormatting: the header is being written; the disk holds no data.
	StateFormatting State = "formatting"
	// StateKeyed: the cluster key is enrolled; the disk holds no data yet.
	StateKeyed State = "keyed"
	// StateInitialized: file system and node state written. Never redone.
	StateInitialized State = "initialized"
)

func (s State) valid() bool {
	return s == StateFormatting || s == StateKeyed || s == StateInitialized
}

// stateToken is the JSON of our LUKS2 token. libcryptsetup requires "type"
// and "keyslots"; our token is bound to no keyslot (it only records state).
type stateToken struct {
	Type     string   `json:"type"`
	Keyslots []string `json:"keyslots"`
	State    State    `json:"state"`
}

func stateTokenJSON(s State) (string, error) {
	if !s.valid() {
		return "", fmt.Errorf("invalid disk state %q", s)
	}
	b, err := json.Marshal(stateToken{Type: constants.LUKSTokenType, Keyslots: []string{}, State: s})
	return string(b), err
}
