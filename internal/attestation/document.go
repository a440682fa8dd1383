package attestation

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Issuer produces an attestation document binding `binding` (32 bytes, see
// the package documentation) into the quote's qualifying data.
type Issuer interface {
	Issue(ctx context.Context, binding []byte) ([]byte, error)
}

// Validator checks a document against the binding the validator computed
// itself.
type Validator interface {
	Validate(ctx context.Context, doc, binding []byte) error
}

const (
	// DocumentVersion is the only version this package writes and reads.
	DocumentVersion = 1
	// TypeTPMQuote is a document with a TPM 2.0 quote.
	TypeTPMQuote = "tpm2-quote"
	// TypeDev is a development document without a TPM.
	TypeDev = "dev"
	// MaxDocumentSize bounds a document on the wire and in Validate.
	MaxDocumentSize = 16 << 10
	// BindingSize is the length of a binding (a SHA-256 digest).
	BindingSize = 32
)

// ErrInvalidDocument wraps every reason a document is rejected, so callers
// can tell a failed attestation from a broken connection.
var ErrInvalidDocument = errors.New("attestation document rejected")

// document is the JSON wire form; see the package documentation.
type document struct {
	Version       int       `json:"version"`
	Type          string    `json:"type"`
	Quote         []byte    `json:"quote,omitempty"`
	Signature     []byte    `json:"signature,omitempty"`
	PCRs          pcrValues `json:"pcrs,omitempty"`
	AKPublic      []byte    `json:"ak_public,omitempty"`
	AKCertificate []byte    `json:"ak_certificate,omitempty"`
	Binding       hexBytes  `json:"binding,omitempty"` // dev documents only
}

type hexBytes []byte

func (h hexBytes) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(h)), nil }
func (h *hexBytes) UnmarshalText(b []byte) error {
	v, err := hex.DecodeString(string(b))
	*h = v
	return err
}

// pcrValues maps PCR index to value; JSON keys are decimal indices and
// values lowercase hex, the same form as the measurements file.
type pcrValues map[uint32][]byte

func (p pcrValues) MarshalJSON() ([]byte, error) {
	m := make(map[string]string, len(p))
	for k, v := range p {
		m[strconv.FormatUint(uint64(k), 10)] = hex.EncodeToString(v)
	}
	return json.Marshal(m)
}

func (p *pcrValues) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	out := make(pcrValues, len(m))
	for k, v := range m {
		idx, err := strconv.ParseUint(k, 10, 32)
		if err != nil || idx > 23 {
			return fmt.Errorf("PCR index %q is not 0–23", k)
		}
		val, err := hex.DecodeString(v)
		if err != nil || len(val) != 32 {
			return fmt.Errorf("PCR %d: value is not 32 bytes of hex", idx)
		}
		out[uint32(idx)] = val
	}
	*p = out
	return nil
}

func parseDocument(doc []byte) (*document, error) {
	if len(doc) == 0 {
		return nil, fmt.Errorf("%w: empty document", ErrInvalidDocument)
	}
	if len(doc) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidDocument, len(doc), MaxDocumentSize)
	}
	var d document
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("%w: not a JSON document: %v", ErrInvalidDocument, err)
	}
	if d.Version != DocumentVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrInvalidDocument, d.Version, DocumentVersion)
	}
	return &d, nil
}

func checkBindingSize(binding []byte) error {
	if len(binding) != BindingSize {
		return fmt.Errorf("binding is %d bytes, want %d", len(binding), BindingSize)
	}
	return nil
}
