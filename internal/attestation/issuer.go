package attestation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// OpenFunc opens a connection to the TPM (linuxtpm.Open on /dev/tpmrm0,
// linuxudstpm.Open on an swtpm socket). The caller closes it.
type OpenFunc func() (transport.TPMCloser, error)

// TPMIssuer quotes the TPM's PCRs with the attestation key.
type TPMIssuer struct {
	open   OpenFunc
	log    *zap.Logger
	akCert []byte // DER from NV, nil when the platform provisioned none

	// mu serialises quotes: a TPM is one device and swtpm serves one
	// connection at a time.
	mu sync.Mutex
}

// NewTPMIssuer checks that the TPM can create the AK and reads the AK
// certificate from NV (AKCertNVIndex), if the platform provisioned one.
func NewTPMIssuer(open func() (transport.TPMCloser, error), log *zap.Logger) (Issuer, error) {
	if log == nil {
		log = zap.NewNop()
	}
	t, err := open()
	if err != nil {
		return nil, fmt.Errorf("opening TPM: %w", err)
	}
	defer t.Close()

	ak, err := createAK(t)
	if err != nil {
		return nil, err
	}
	flush(t, ak.handle.Handle)
	cert, err := readAKCertificate(t)
	if err != nil {
		return nil, err
	}
	log.Info("TPM attestation issuer ready", logging.Event("attestation_issuer_ready"),
		zap.Bool("akCertificate", cert != nil))
	return &TPMIssuer{open: open, log: log, akCert: cert}, nil
}

// Issue quotes QuotedPCRs with qualifying data = binding.
func (i *TPMIssuer) Issue(ctx context.Context, binding []byte) ([]byte, error) {
	if err := checkBindingSize(binding); err != nil {
		return nil, fmt.Errorf("issuing attestation: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	i.mu.Lock()
	defer i.mu.Unlock()

	t, err := i.open()
	if err != nil {
		return nil, fmt.Errorf("opening TPM: %w", err)
	}
	defer t.Close()
	ak, err := createAK(t)
	if err != nil {
		return nil, err
	}
	defer flush(t, ak.handle.Handle)

	// A PCR can be extended between TPM2_PCR_Read and TPM2_Quote; then the
	// reported values do not match the quote and we try again.
	for attempt := 0; attempt < 3; attempt++ {
		doc, err := i.quote(t, ak, binding)
		if errors.Is(err, errPCRsChanged) {
			continue
		}
		return doc, err
	}
	return nil, fmt.Errorf("issuing attestation: %w", errPCRsChanged)
}

var errPCRsChanged = errors.New("PCRs changed while quoting")

func (i *TPMIssuer) quote(t transport.TPM, ak *attestationKey, binding []byte) ([]byte, error) {
	rsp, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: ak.handle.Handle, Name: ak.handle.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: binding},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:      pcrSelection(QuotedPCRs),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("quoting PCRs: %w", err)
	}
	values, err := ReadPCRs(t, QuotedPCRs)
	if err != nil {
		return nil, err
	}
	attest, err := rsp.Quoted.Contents()
	if err != nil {
		return nil, fmt.Errorf("decoding quote: %w", err)
	}
	info, err := attest.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("decoding quote: %w", err)
	}
	if !bytes.Equal(info.PCRDigest.Buffer, pcrDigest(values, QuotedPCRs)) {
		return nil, errPCRsChanged
	}
	doc, err := json.Marshal(document{
		Version:       DocumentVersion,
		Type:          TypeTPMQuote,
		Quote:         rsp.Quoted.Bytes(),
		Signature:     tpm2.Marshal(rsp.Signature),
		PCRs:          values,
		AKPublic:      ak.publicBytes,
		AKCertificate: i.akCert,
	})
	if err != nil {
		return nil, fmt.Errorf("encoding attestation document: %w", err)
	}
	i.log.Debug("Issued attestation document", logging.Event("attestation_issued"), zap.Int("size", len(doc)))
	return doc, nil
}
