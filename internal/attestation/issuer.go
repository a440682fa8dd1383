package attestation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// OpenFunc opens a connection to the TPM (linuxtpm.Open on /dev/tpmrm0,
// linuxudstpm.Open on an swtpm socket). The caller closes it.
type OpenFunc func() (transport.TPMCloser, error)

// TPMIssuer quotes the TPM's PCRs with the attestation key.
//
// Issue is the foreground path (the node's own RejoinClient); quotes that
// anybody who reaches a port can ask for go through NewBackgroundIssuer,
// which bounds them and queues them behind every foreground quote on the
// same device lock.
type TPMIssuer struct {
	open   OpenFunc
	log    *zap.Logger
	akCert []byte // DER from NV, nil when the platform provisioned none

	// sched is the device lock: a TPM is one device and swtpm serves one
	// connection at a time.
	sched tpmScheduler
	// saved is the AK's saved context (TPM2_ContextSave), guarded by
	// holding sched. Loading it is a few hundred microseconds; deriving the
	// primary again (TPM2_CreatePrimary) is an ECC key generation, tens of
	// milliseconds on a hardware TPM. The blob is encrypted and
	// integrity-protected by the TPM, and the key is the same deterministic
	// primary either way, so reusing it changes what is proved in no way.
	// nil: create the AK (again) on the next quote.
	saved *savedAK
}

type savedAK struct {
	context     tpm2.TPMSContext
	name        tpm2.TPM2BName
	publicBytes []byte
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

	i := &TPMIssuer{open: open, log: log}
	ak, err := i.loadAK(t)
	if err != nil {
		return nil, err
	}
	flush(t, ak.handle.Handle)
	if i.akCert, err = readAKCertificate(t); err != nil {
		return nil, err
	}
	log.Info("TPM attestation issuer ready", logging.Event("attestation_issuer_ready"),
		zap.Bool("akCertificate", i.akCert != nil))
	return i, nil
}

// Issue quotes QuotedPCRs with qualifying data = binding, at foreground
// priority: it waits at most for the one quote the TPM is running.
func (i *TPMIssuer) Issue(ctx context.Context, binding []byte) ([]byte, error) {
	return i.issue(ctx, binding, false)
}

// issueBackground is Issue behind every foreground quote.
func (i *TPMIssuer) issueBackground(ctx context.Context, binding []byte) ([]byte, error) {
	return i.issue(ctx, binding, true)
}

func (i *TPMIssuer) issue(ctx context.Context, binding []byte, background bool) ([]byte, error) {
	if err := checkBindingSize(binding); err != nil {
		return nil, fmt.Errorf("issuing attestation: %w", err)
	}
	if err := i.sched.acquire(ctx, background); err != nil {
		return nil, fmt.Errorf("issuing attestation: waiting for the TPM: %w", contextCause(ctx, err))
	}
	defer i.sched.release()

	t, err := i.open()
	if err != nil {
		return nil, fmt.Errorf("opening TPM: %w", err)
	}
	defer t.Close()
	ak, err := i.loadAK(t)
	if err != nil {
		return nil, err
	}
	defer flush(t, ak.handle.Handle)

	// A PCR can be extended between TPM2_PCR_Read and TPM2_Quote; then the
	// reported values do not match the quote and we try again.
	for attempt := 0; attempt < 3; attempt++ {
		// The last moment a quote can still be saved: whoever asked may have
		// hung up while we waited for the TPM (the aTLS layer ends ctx when
		// the connection closes), and a quote nobody reads is a quote the
		// RejoinClient waits for.
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("issuing attestation: %w", contextCause(ctx, err))
		}
		doc, err := i.quote(t, ak, binding)
		if errors.Is(err, errPCRsChanged) {
			continue
		}
		return doc, err
	}
	return nil, fmt.Errorf("issuing attestation: %w", errPCRsChanged)
}

// contextCause prefers the cause the canceller gave (e.g. "the peer closed
// the connection") over a bare "context canceled".
func contextCause(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, err) {
		return fmt.Errorf("%w: %w", err, cause)
	}
	return err
}

// loadAK loads the saved AK, or creates it (and saves it for the next
// quote) when there is none or the TPM no longer accepts it (a TPM restart
// invalidates saved transient contexts). The caller holds sched, or is
// NewTPMIssuer before anyone else can use i.
func (i *TPMIssuer) loadAK(t transport.TPM) (*attestationKey, error) {
	if s := i.saved; s != nil {
		rsp, err := tpm2.ContextLoad{Context: s.context}.Execute(t)
		if err == nil {
			return &attestationKey{
				handle:      tpm2.NamedHandle{Handle: rsp.LoadedHandle, Name: s.name},
				publicBytes: s.publicBytes,
			}, nil
		}
		i.log.Debug("Saved attestation key not accepted by the TPM, creating it again",
			logging.Event("attestation_ak_reload_failed"), zap.Error(err))
		i.saved = nil
	}
	ak, err := createAK(t)
	if err != nil {
		return nil, err
	}
	if rsp, err := (tpm2.ContextSave{SaveHandle: ak.handle.Handle}).Execute(t); err == nil {
		i.saved = &savedAK{context: rsp.Context, name: ak.handle.Name, publicBytes: ak.publicBytes}
	} else {
		i.log.Debug("Cannot save the attestation key's context, every quote creates it",
			logging.Event("attestation_ak_save_failed"), zap.Error(err))
	}
	return ak, nil
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
