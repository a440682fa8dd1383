package attestation

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
)

// FuzzValidateDocument fuzzes the attestation-document parser and both
// validators with a peer-controlled document and binding. Seeds:
// testdata/fuzz/FuzzValidateDocument plus a real dev document made here.
// Invariants: no panic; every rejection wraps ErrInvalidDocument; the TPM
// validator, pinned to an AK whose private key nobody has, accepts nothing;
// the dev validator accepts only a dev document bound to the given binding.
func FuzzValidateDocument(f *testing.F) {
	binding := make([]byte, BindingSize)
	for i := range binding {
		binding[i] = byte(i)
	}
	if doc, err := NewDevIssuer(nil).Issue(context.Background(), binding); err == nil {
		f.Add(doc, binding)
	}
	f.Add([]byte(`{"version":1,"type":"tpm2-quote","quote":"AAAA","signature":"AAAA","pcrs":{"0":"`+
		"0000000000000000000000000000000000000000000000000000000000000000"+`"},"ak_public":"AAAA"}`), binding)
	f.Add([]byte(`{"version":1,"type":"dev","binding":"zz"}`), binding)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	pinned, err := NewTPMValidator(ValidatorConfig{PinnedAKs: []crypto.PublicKey{&key.PublicKey}})
	if err != nil {
		f.Fatal(err)
	}
	dev := NewDevValidator(nil)
	f.Fuzz(func(t *testing.T, doc, binding []byte) {
		if err := pinned.Validate(context.Background(), doc, binding); err == nil {
			t.Fatal("the pinned TPM validator accepted a document no TPM signed")
		} else if !errors.Is(err, ErrInvalidDocument) {
			t.Fatalf("rejection does not wrap ErrInvalidDocument: %v", err)
		}
		err := dev.Validate(context.Background(), doc, binding)
		if err != nil {
			if !errors.Is(err, ErrInvalidDocument) {
				t.Fatalf("dev rejection does not wrap ErrInvalidDocument: %v", err)
			}
			return
		}
		d, perr := parseDocument(doc)
		if perr != nil || d.Type != TypeDev || string(d.Binding) != string(binding) {
			t.Fatalf("dev validator accepted an unbound or unparsable document (%v)", perr)
		}
	})
}
