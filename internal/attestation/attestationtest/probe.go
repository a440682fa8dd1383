package attestationtest

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// TPMProbe sits between an issuer and a real TPM: it counts the commands
// sent, by command code, and can make TPM2_Quote slow (the 50 ms of a
// hardware TPM) or hold it until the test lets it go. What it counts is
// what the TPM was really asked to do, so "this connection cost no quote"
// is a count of zero TPM2_Quote commands, not a statement about the code.
type TPMProbe struct {
	inner func() (transport.TPMCloser, error)

	mu         sync.Mutex
	counts     map[tpm2.TPMCC]int
	quoteDelay time.Duration
	gate       chan struct{} // non-nil: quotes wait until it is closed
	held       chan struct{} // one token per quote waiting at the gate
}

// NewTPMProbe wraps open (e.g. SwTPM.Open).
func NewTPMProbe(open func() (transport.TPMCloser, error)) *TPMProbe {
	return &TPMProbe{inner: open, counts: map[tpm2.TPMCC]int{}}
}

// SetQuoteDelay makes every later TPM2_Quote take d longer.
func (p *TPMProbe) SetQuoteDelay(d time.Duration) {
	p.mu.Lock()
	p.quoteDelay = d
	p.mu.Unlock()
}

// HoldQuotes makes later TPM2_Quote commands wait until release is called.
// held receives one value per quote that reached the gate.
func (p *TPMProbe) HoldQuotes() (held <-chan struct{}, release func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	gate, h := make(chan struct{}), make(chan struct{}, 1024)
	p.gate, p.held = gate, h
	var once sync.Once
	return h, func() {
		once.Do(func() {
			p.mu.Lock()
			p.gate = nil
			p.mu.Unlock()
			close(gate)
		})
	}
}

// Count is how many commands with code cc were sent.
func (p *TPMProbe) Count(cc tpm2.TPMCC) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[cc]
}

// Quotes is how many TPM2_Quote commands were sent.
func (p *TPMProbe) Quotes() int { return p.Count(tpm2.TPMCCQuote) }

// Open matches attestation.OpenFunc.
func (p *TPMProbe) Open() (transport.TPMCloser, error) {
	t, err := p.inner()
	if err != nil {
		return nil, err
	}
	return &probedTPM{TPMCloser: t, probe: p}, nil
}

type probedTPM struct {
	transport.TPMCloser
	probe *TPMProbe
}

func (t *probedTPM) Send(cmd []byte) ([]byte, error) {
	// A command is tag (2) || size (4) || command code (4) || ...
	if len(cmd) >= 10 {
		cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
		p := t.probe
		p.mu.Lock()
		p.counts[cc]++
		delay, gate, held := p.quoteDelay, p.gate, p.held
		p.mu.Unlock()
		if cc == tpm2.TPMCCQuote {
			if gate != nil {
				held <- struct{}{}
				<-gate
			}
			time.Sleep(delay)
		}
	}
	return t.TPMCloser.Send(cmd)
}
