package attestation

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// QuoteLimits bound the quotes a background issuer admits. A quote is
// admitted from the moment it is asked for until it is issued or given up,
// waiting for the TPM included; beyond a limit Issue fails at once with
// ErrQuoteBusy rather than queueing, so a flood costs the TPM at most
// MaxConcurrent quotes at a time and memory for none.
type QuoteLimits struct {
	// MaxConcurrent bounds the admitted quotes of all sources
	// (zero: constants.RecoveryMaxConcurrentQuotes).
	MaxConcurrent int
	// MaxPerSource bounds the admitted quotes of one source, the peer's IP
	// address as the aTLS layer passes it with WithQuoteSource
	// (zero: constants.RecoveryMaxQuotesPerSource). A host can speak from
	// as many addresses as it likes, so this only keeps one noisy peer
	// from taking every slot; MaxConcurrent is the real bound.
	MaxPerSource int
}

func (l QuoteLimits) withDefaults() QuoteLimits {
	if l.MaxConcurrent <= 0 {
		l.MaxConcurrent = constants.RecoveryMaxConcurrentQuotes
	}
	if l.MaxPerSource <= 0 {
		l.MaxPerSource = constants.RecoveryMaxQuotesPerSource
	}
	return l
}

// ErrQuoteBusy is returned by a background issuer at its limits.
var ErrQuoteBusy = errors.New("too many attestation quotes in progress")

// NewBackgroundIssuer returns an issuer for quotes that anybody who can
// reach a port can ask for (the RecoveryServer's aTLS handshakes). It admits
// at most limits' quotes and fails fast beyond them. When iss is a
// TPMIssuer, its quotes run at background priority: every foreground
// Issue of the same TPMIssuer (the RejoinClient's) goes first, so the
// RejoinClient never waits for more than the one quote the TPM is running.
func NewBackgroundIssuer(iss Issuer, limits QuoteLimits) Issuer {
	return &backgroundIssuer{inner: iss, limits: limits.withDefaults(), perSource: map[string]int{}}
}

type backgroundIssuer struct {
	inner  Issuer
	limits QuoteLimits

	mu        sync.Mutex
	admitted  int
	perSource map[string]int
}

// lowPriorityIssuer is an issuer with a background queue (TPMIssuer).
type lowPriorityIssuer interface {
	issueBackground(ctx context.Context, binding []byte) ([]byte, error)
}

func (b *backgroundIssuer) Issue(ctx context.Context, binding []byte) ([]byte, error) {
	src := quoteSource(ctx)
	if err := b.admit(src); err != nil {
		return nil, err
	}
	defer b.done(src)
	if low, ok := b.inner.(lowPriorityIssuer); ok {
		return low.issueBackground(ctx, binding)
	}
	return b.inner.Issue(ctx, binding)
}

func (b *backgroundIssuer) admit(src string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.admitted >= b.limits.MaxConcurrent:
		return fmt.Errorf("issuing attestation: %w (%d at once)", ErrQuoteBusy, b.limits.MaxConcurrent)
	case b.perSource[src] >= b.limits.MaxPerSource:
		return fmt.Errorf("issuing attestation: %w (%d at once for one source)", ErrQuoteBusy, b.limits.MaxPerSource)
	}
	b.admitted++
	b.perSource[src]++
	return nil
}

func (b *backgroundIssuer) done(src string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.admitted--
	if b.perSource[src]--; b.perSource[src] <= 0 {
		delete(b.perSource, src)
	}
}

type quoteSourceKey struct{}

// WithQuoteSource tells a background issuer who asks for the quote (the
// peer's IP address), for QuoteLimits.MaxPerSource.
func WithQuoteSource(ctx context.Context, source string) context.Context {
	return context.WithValue(ctx, quoteSourceKey{}, source)
}

func quoteSource(ctx context.Context) string {
	s, _ := ctx.Value(quoteSourceKey{}).(string)
	return s
}
