package attestation

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
)

// ValidatorConfig configures a TPM validator. Exactly one AK trust mode must
// be set: AKRoots, PinnedAKs (both may be combined), or TrustAnyAK.
type ValidatorConfig struct {
	// Measurements are the expected PCR values; PCR 15 is always required
	// to be zero, whether it is listed or not.
	Measurements Measurements
	// AKRoots is the platform CA pool: the document must carry an AK
	// certificate that chains to it and certifies the AK.
	AKRoots *x509.CertPool
	// PinnedAKs are trusted AK public keys (as from x509.ParsePKIXPublicKey).
	PinnedAKs []crypto.PublicKey
	// TrustAnyAK accepts any AK. Development only: every validation logs a
	// warning.
	TrustAnyAK bool
	Log        *zap.Logger
}

// TPMValidator checks tpm2-quote documents.
type TPMValidator struct {
	cfg ValidatorConfig
	log *zap.Logger
}

// NewTPMValidator checks cfg and returns a validator.
func NewTPMValidator(cfg ValidatorConfig) (Validator, error) {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	trusted := cfg.AKRoots != nil || len(cfg.PinnedAKs) > 0
	switch {
	case !trusted && !cfg.TrustAnyAK:
		return nil, fmt.Errorf("validator: no AK trust configured (platform CA, pinned AKs, or the development TrustAnyAK)")
	case trusted && cfg.TrustAnyAK:
		return nil, fmt.Errorf("validator: TrustAnyAK cannot be combined with a platform CA or pinned AKs")
	}
	for _, k := range cfg.PinnedAKs {
		if _, ok := k.(*ecdsa.PublicKey); !ok {
			return nil, fmt.Errorf("validator: pinned AK is %T, want an ECDSA P-256 key", k)
		}
	}
	if err := cfg.Measurements.check(); err != nil {
		return nil, fmt.Errorf("validator: %w", err)
	}
	if cfg.TrustAnyAK {
		cfg.Log.Warn("Attestation validator trusts ANY attestation key: development only, never in production",
			logging.Event("attestation_trust_any_ak"))
	}
	return &TPMValidator{cfg: cfg, log: cfg.Log}, nil
}

// Validate implements Validator; every error wraps ErrInvalidDocument.
func (v *TPMValidator) Validate(_ context.Context, raw, binding []byte) error {
	if err := checkBindingSize(binding); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidDocument, err)
	}
	doc, err := parseDocument(raw)
	if err != nil {
		return err
	}
	if doc.Type != TypeTPMQuote {
		return fmt.Errorf("%w: type %q, want %q", ErrInvalidDocument, doc.Type, TypeTPMQuote)
	}
	akPub, err := v.trustedAK(doc)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidDocument, err)
	}
	if err := verifyQuoteSignature(akPub, doc.Quote, doc.Signature); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidDocument, err)
	}
	if err := v.checkQuote(doc, binding); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidDocument, err)
	}
	return nil
}

// trustedAK decodes the document's AK and checks it against the trust mode.
func (v *TPMValidator) trustedAK(doc *document) (*ecdsa.PublicKey, error) {
	tpub, err := tpm2.Unmarshal[tpm2.TPMTPublic](doc.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("decoding AK public area: %v", err)
	}
	attrs := tpub.ObjectAttributes
	if !attrs.Restricted || !attrs.SignEncrypt || attrs.Decrypt || !attrs.FixedTPM {
		return nil, fmt.Errorf("AK is not a restricted signing key bound to its TPM")
	}
	pub, err := tpm2.Pub(*tpub)
	if err != nil {
		return nil, fmt.Errorf("decoding AK public key: %v", err)
	}
	ak, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("AK is %T, only ECDSA P-256 AKs are supported", pub)
	}

	if v.cfg.TrustAnyAK {
		v.log.Warn("Accepting attestation key without checking it: development only, never in production",
			logging.Event("attestation_trust_any_ak"))
		return ak, nil
	}
	for _, pinned := range v.cfg.PinnedAKs {
		if ak.Equal(pinned) {
			return ak, nil
		}
	}
	if v.cfg.AKRoots != nil && len(doc.AKCertificate) > 0 {
		if err := v.checkAKCertificate(doc.AKCertificate, ak); err != nil {
			return nil, err
		}
		return ak, nil
	}
	if v.cfg.AKRoots != nil {
		return nil, fmt.Errorf("AK is not trusted: document has no AK certificate and the AK is not pinned")
	}
	return nil, fmt.Errorf("AK is not trusted: not one of the %d pinned AKs", len(v.cfg.PinnedAKs))
}

func (v *TPMValidator) checkAKCertificate(der []byte, ak *ecdsa.PublicKey) error {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("parsing AK certificate: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:     v.cfg.AKRoots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("AK is not trusted: AK certificate (subject %q, issuer %q) does not chain to the platform CA: %v",
			cert.Subject.String(), cert.Issuer.String(), err)
	}
	if !ak.Equal(cert.PublicKey) {
		return fmt.Errorf("AK is not trusted: AK certificate certifies a different key")
	}
	return nil
}

// verifyQuoteSignature checks the TPMT_SIGNATURE over SHA-256(quote).
func verifyQuoteSignature(ak *ecdsa.PublicKey, quote, sigBytes []byte) error {
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](sigBytes)
	if err != nil {
		return fmt.Errorf("decoding quote signature: %v", err)
	}
	if sig.SigAlg != tpm2.TPMAlgECDSA {
		return fmt.Errorf("quote signature algorithm %v, want ECDSA", sig.SigAlg)
	}
	ecc, err := sig.Signature.ECDSA()
	if err != nil {
		return fmt.Errorf("decoding quote signature: %v", err)
	}
	if ecc.Hash != tpm2.TPMAlgSHA256 {
		return fmt.Errorf("quote signature hash %v, want SHA-256", ecc.Hash)
	}
	digest := sha256.Sum256(quote)
	r := new(big.Int).SetBytes(ecc.SignatureR.Buffer)
	s := new(big.Int).SetBytes(ecc.SignatureS.Buffer)
	if !ecdsa.Verify(ak, digest[:], r, s) {
		return fmt.Errorf("quote signature is not valid for the AK (quote or signature tampered)")
	}
	return nil
}

// checkQuote checks the signed quote's contents against the binding, the
// reported PCR values and the expected measurements.
func (v *TPMValidator) checkQuote(doc *document, binding []byte) error {
	attest, err := tpm2.Unmarshal[tpm2.TPMSAttest](doc.Quote)
	if err != nil {
		return fmt.Errorf("decoding quote: %v", err)
	}
	if attest.Type != tpm2.TPMSTAttestQuote {
		return fmt.Errorf("attestation structure is %v, not a quote", attest.Type)
	}
	if !bytes.Equal(attest.ExtraData.Buffer, binding) {
		return fmt.Errorf("quote is not bound to this session: qualifying data does not match the binding (replayed document, wrong nonce or different TLS key)")
	}
	info, err := attest.Attested.Quote()
	if err != nil {
		return fmt.Errorf("decoding quote: %v", err)
	}
	if got := selectedPCRs(info.PCRSelect); !slices.Equal(got, QuotedPCRs) || len(info.PCRSelect.PCRSelections) != 1 {
		return fmt.Errorf("quote selects SHA-256 PCRs %v, want exactly %v", got, QuotedPCRs)
	}
	if len(doc.PCRs) != len(QuotedPCRs) {
		return fmt.Errorf("document reports %d PCR values, want %d", len(doc.PCRs), len(QuotedPCRs))
	}
	for _, p := range QuotedPCRs {
		if _, ok := doc.PCRs[p]; !ok {
			return fmt.Errorf("document does not report PCR %d", p)
		}
	}
	if !bytes.Equal(info.PCRDigest.Buffer, pcrDigest(doc.PCRs, QuotedPCRs)) {
		return fmt.Errorf("reported PCR values do not match the quoted PCR digest")
	}
	// Every differing PCR is named: which one differs tells the operator
	// whether the node runs another image (11) or was booted with another
	// configuration (12).
	var differ []string
	for _, p := range QuotedPCRs {
		want, ok := v.cfg.Measurements[p]
		if !ok {
			continue
		}
		if !bytes.Equal(doc.PCRs[p], want) {
			differ = append(differ, fmt.Sprintf("PCR %d mismatch: got %s, want %s", p, hex.EncodeToString(doc.PCRs[p]), hex.EncodeToString(want)))
		}
	}
	if len(differ) > 0 {
		return fmt.Errorf("measurements differ: %s", strings.Join(differ, "; "))
	}
	if pcr15 := doc.PCRs[constants.PCRClusterID]; !isZero(pcr15) {
		return fmt.Errorf("PCR %d is not zero (node is already marked as bootstrapped): %s",
			constants.PCRClusterID, hex.EncodeToString(pcr15))
	}
	return nil
}
