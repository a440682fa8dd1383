package attestation

import (
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
)

func binding(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, BindingSize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// blockingIssuer holds every Issue until release is closed.
type blockingIssuer struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingIssuer) Issue(ctx context.Context, _ []byte) ([]byte, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
		return []byte("doc"), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestBackgroundIssuerFailsFastAtItsLimits(t *testing.T) {
	inner := &blockingIssuer{entered: make(chan struct{}, 8), release: make(chan struct{})}
	bg := NewBackgroundIssuer(inner, QuoteLimits{MaxConcurrent: 3, MaxPerSource: 2})
	from := func(src string) context.Context { return WithQuoteSource(context.Background(), src) }
	// A quote over a limit must fail at once; without limits it would wait
	// for the blocked ones, and the guard turns that hang into a failure.
	overLimit := func(src string) error {
		ctx, cancel := context.WithTimeout(from(src), 2*time.Second)
		defer cancel()
		_, err := bg.Issue(ctx, nil)
		return err
	}

	var wg sync.WaitGroup
	start := func(src string) {
		wg.Go(func() {
			if _, err := bg.Issue(from(src), nil); err != nil {
				t.Errorf("admitted quote from %s: %v", src, err)
			}
		})
		<-inner.entered
	}
	start("192.0.2.1")
	start("192.0.2.1")
	// A third from the same source is over its per-source cap, at once.
	if err := overLimit("192.0.2.1"); !errors.Is(err, ErrQuoteBusy) {
		t.Errorf("third quote from one source: %v, want ErrQuoteBusy", err)
	}
	start("192.0.2.2")
	// The total is full: another source is refused too, at once.
	if err := overLimit("192.0.2.3"); !errors.Is(err, ErrQuoteBusy) {
		t.Errorf("quote over the total: %v, want ErrQuoteBusy", err)
	}
	close(inner.release)
	wg.Wait()
	// Finished quotes free their slots.
	if _, err := bg.Issue(from("192.0.2.1"), nil); err != nil {
		t.Fatalf("after the slots were freed: %v", err)
	}
}

// The AK is derived once and then loaded from its saved context; a TPM that
// no longer accepts the context (restarted) gets a fresh derivation, and
// every document still validates against the same pinned AK.
func TestAKIsReusedAcrossQuotes(t *testing.T) {
	swtpm := attestationtest.StartSwTPM(t, "")
	current := swtpm
	var mu sync.Mutex
	probe := attestationtest.NewTPMProbe(func() (transport.TPMCloser, error) {
		mu.Lock()
		defer mu.Unlock()
		return current.Open()
	})
	iss, err := NewTPMIssuer(probe.Open, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	tc, err := swtpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	ak, err := createAK(tc)
	if err != nil {
		t.Fatal(err)
	}
	flush(tc, ak.handle.Handle)
	tc.Close()
	pub, err := tpm2.Pub(ak.public)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewTPMValidator(ValidatorConfig{PinnedAKs: []crypto.PublicKey{pub}})
	if err != nil {
		t.Fatal(err)
	}
	quote := func() {
		t.Helper()
		b := binding(t)
		doc, err := iss.Issue(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Validate(context.Background(), doc, b); err != nil {
			t.Fatalf("Validate: %v", err)
		}
	}
	primaries := func() int { return probe.Count(tpm2.TPMCCCreatePrimary) - 1 } // the test's own createAK is not probed; NewTPMIssuer's is
	for range 5 {
		quote()
	}
	if n := primaries(); n != 0 {
		t.Fatalf("%d AK derivations for 5 quotes after the first, want 0 (saved context reused)", n)
	}

	// Same TPM after a restart: saved transient contexts are void.
	swtpm.Stop()
	mu.Lock()
	current = attestationtest.StartSwTPM(t, swtpm.StateDir)
	mu.Unlock()
	quote()
	quote()
	if n := primaries(); n != 1 {
		t.Fatalf("%d AK derivations after a TPM restart, want 1", n)
	}
}
