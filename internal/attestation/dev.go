package attestation

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// NewDevIssuer returns an issuer for development machines without a TPM.
// Its documents prove nothing; it warns on every use.
func NewDevIssuer(log *zap.Logger) Issuer {
	if log == nil {
		log = zap.NewNop()
	}
	return devIssuer{log: log}
}

type devIssuer struct{ log *zap.Logger }

func (d devIssuer) Issue(_ context.Context, binding []byte) ([]byte, error) {
	d.log.Warn("Issuing development attestation document without a TPM: proves nothing, never use in production",
		logging.Event("attestation_dev_issue"))
	if err := checkBindingSize(binding); err != nil {
		return nil, fmt.Errorf("issuing attestation: %w", err)
	}
	return json.Marshal(document{Version: DocumentVersion, Type: TypeDev, Binding: binding})
}

// NewDevValidator returns a validator that accepts development documents
// (it still checks their binding, so a wiring mistake shows up in
// development too). It warns on every use.
func NewDevValidator(log *zap.Logger) Validator {
	if log == nil {
		log = zap.NewNop()
	}
	return devValidator{log: log}
}

type devValidator struct{ log *zap.Logger }

func (d devValidator) Validate(_ context.Context, raw, binding []byte) error {
	d.log.Warn("Accepting development attestation document without checking a TPM quote: never use in production",
		logging.Event("attestation_dev_validate"))
	doc, err := parseDocument(raw)
	if err != nil {
		return err
	}
	if doc.Type != TypeDev {
		return fmt.Errorf("%w: type %q, the development validator accepts only %q", ErrInvalidDocument, doc.Type, TypeDev)
	}
	if !bytes.Equal(doc.Binding, binding) {
		return fmt.Errorf("%w: development document is not bound to this session", ErrInvalidDocument)
	}
	return nil
}
