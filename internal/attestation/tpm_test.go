package attestation_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/testutil"
)

func randomBinding(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, attestation.BindingSize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// issueAndValidate has iss attest n fresh bindings and v accept every one.
func issueAndValidate(t *testing.T, iss attestation.Issuer, v attestation.Validator, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		b := randomBinding(t)
		doc, err := iss.Issue(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Validate(context.Background(), doc, b); err != nil {
			t.Fatalf("Validate: %v", err)
		}
	}
}

func newIssuer(t *testing.T, tpm *attestationtest.SwTPM) attestation.Issuer {
	t.Helper()
	iss, err := attestation.NewTPMIssuer(tpm.Open, zap.NewNop())
	if err != nil {
		t.Fatalf("NewTPMIssuer: %v", err)
	}
	return iss
}

func newValidator(t *testing.T, cfg attestation.ValidatorConfig) attestation.Validator {
	t.Helper()
	v, err := attestation.NewTPMValidator(cfg)
	if err != nil {
		t.Fatalf("NewTPMValidator: %v", err)
	}
	return v
}

func extend(t *testing.T, tpm *attestationtest.SwTPM, pcr uint32, data string) []byte {
	t.Helper()
	tc, err := tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	d := sha256.Sum256([]byte(data))
	if err := attestation.ExtendPCR(tc, pcr, d[:]); err != nil {
		t.Fatal(err)
	}
	return attestation.ExtendedValue(d[:])
}

// wantRejected asserts a validation error that wraps ErrInvalidDocument and
// names the reason.
func wantRejected(t *testing.T, err error, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("document accepted, want rejection containing %q", reason)
	}
	if !errors.Is(err, attestation.ErrInvalidDocument) {
		t.Errorf("error %v does not wrap ErrInvalidDocument", err)
	}
	if !strings.Contains(err.Error(), reason) {
		t.Errorf("error %q does not contain %q", err, reason)
	}
}

func TestIssueValidatePinnedAK(t *testing.T) {
	tpm := attestationtest.StartSwTPM(t, "")
	pcr11 := extend(t, tpm, constants.PCRImage, "disk-mapper binary")
	iss := newIssuer(t, tpm)
	v := newValidator(t, attestation.ValidatorConfig{
		PinnedAKs:    []crypto.PublicKey{testutil.AKPublicKey(t, tpm)},
		Measurements: attestation.Measurements{constants.PCRImage: pcr11, constants.PCRClusterID: make([]byte, 32)},
	})
	binding := randomBinding(t)
	doc, err := iss.Issue(context.Background(), binding)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if err := v.Validate(context.Background(), doc, binding); err != nil {
		t.Fatalf("Validate: %v", err)
	}

	t.Run("wrong binding", func(t *testing.T) {
		wantRejected(t, v.Validate(context.Background(), doc, randomBinding(t)), "qualifying data does not match the binding")
	})
	t.Run("tampered quote", func(t *testing.T) {
		wantRejected(t, v.Validate(context.Background(), mutate(t, doc, func(d map[string]any) {
			q := decodeB64(t, d["quote"])
			q[len(q)-1] ^= 1
			d["quote"] = q
		}), binding), "quote signature is not valid")
	})
	t.Run("tampered PCR value", func(t *testing.T) {
		wantRejected(t, v.Validate(context.Background(), mutate(t, doc, func(d map[string]any) {
			d["pcrs"].(map[string]any)["11"] = hex.EncodeToString(make([]byte, 32))
		}), binding), "do not match the quoted PCR digest")
	})
	t.Run("tampered signature", func(t *testing.T) {
		wantRejected(t, v.Validate(context.Background(), mutate(t, doc, func(d map[string]any) {
			s := decodeB64(t, d["signature"])
			s[len(s)-1] ^= 1
			d["signature"] = s
		}), binding), "quote signature is not valid")
	})
	t.Run("untrusted AK", func(t *testing.T) {
		other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		v := newValidator(t, attestation.ValidatorConfig{PinnedAKs: []crypto.PublicKey{&other.PublicKey}})
		wantRejected(t, v.Validate(context.Background(), doc, binding), "AK is not trusted")
	})
	t.Run("PCR mismatch", func(t *testing.T) {
		want := bytes.Repeat([]byte{0xab}, 32)
		v := newValidator(t, attestation.ValidatorConfig{
			PinnedAKs:    []crypto.PublicKey{testutil.AKPublicKey(t, tpm)},
			Measurements: attestation.Measurements{constants.PCRImage: want},
		})
		wantRejected(t, v.Validate(context.Background(), doc, binding), "PCR 11 mismatch")
	})
	t.Run("garbage", func(t *testing.T) {
		wantRejected(t, v.Validate(context.Background(), []byte("{"), binding), "not a JSON document")
		wantRejected(t, v.Validate(context.Background(), bytes.Repeat([]byte(" "), attestation.MaxDocumentSize+1), binding), "more than")
		wantRejected(t, v.Validate(context.Background(), doc, binding[:5]), "binding is 5 bytes")
	})
}

func TestValidateRejectsMarkedNode(t *testing.T) {
	tpm := attestationtest.StartSwTPM(t, "")
	iss := newIssuer(t, tpm)
	v := newValidator(t, attestation.ValidatorConfig{PinnedAKs: []crypto.PublicKey{testutil.AKPublicKey(t, tpm)}})
	if err := attestation.NewMarker(tpm.Open).MarkNodeAsBootstrapped(bytes.Repeat([]byte{7}, 32)); err != nil {
		t.Fatal(err)
	}
	binding := randomBinding(t)
	doc, err := iss.Issue(context.Background(), binding)
	if err != nil {
		t.Fatal(err)
	}
	wantRejected(t, v.Validate(context.Background(), doc, binding), "PCR 15 is not zero")
}

func TestTrustAnyAKWarnsOnEveryUse(t *testing.T) {
	tpm := attestationtest.StartSwTPM(t, "")
	core, logs := observer.New(zap.WarnLevel)
	v := newValidator(t, attestation.ValidatorConfig{TrustAnyAK: true, Log: zap.New(core)})
	iss := newIssuer(t, tpm)
	issueAndValidate(t, iss, v, 3)
	// One warning at construction plus one per validation.
	if got := logs.FilterField(zap.String("event", "attestation_trust_any_ak")).Len(); got != 4 {
		t.Errorf("got %d trust-any-AK warnings, want 4", got)
	}
}

func TestValidatorConfigErrors(t *testing.T) {
	for name, cfg := range map[string]attestation.ValidatorConfig{
		"no trust":         {},
		"any plus pinned":  {TrustAnyAK: true, AKRoots: x509.NewCertPool()},
		"PCR 15 nonzero":   {TrustAnyAK: true, Measurements: attestation.Measurements{15: bytes.Repeat([]byte{1}, 32)}},
		"PCR out of range": {TrustAnyAK: true, Measurements: attestation.Measurements{16: make([]byte, 32)}},
		"short value":      {TrustAnyAK: true, Measurements: attestation.Measurements{11: make([]byte, 20)}},
		"RSA pin":          {PinnedAKs: []crypto.PublicKey{"not a key"}},
	} {
		if _, err := attestation.NewTPMValidator(cfg); err == nil {
			t.Errorf("%s: NewTPMValidator accepted a bad config", name)
		}
	}
}

func mutate(t *testing.T, doc []byte, f func(map[string]any)) []byte {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	f(d)
	out, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func decodeB64(t *testing.T, v any) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(v.(string))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
