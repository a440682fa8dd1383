package atls

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/diskmapper/disk-mapper/internal/attestation"
)

// The attestation exchange runs on the TLS connection right after the
// handshake. Each side, in parallel with the other:
//
//  1. sends one document frame: frameDocument (it attests) or frameNoDocument;
//  2. reads the peer's document frame and, with a Validator, validates it;
//  3. sends a verdict frame: frameAccept, or frameReject with the reason;
//  4. reads the peer's verdict.
//
// A frame is kind (1 byte) || length (4 bytes, big endian) || payload, with
// payload at most attestation.MaxDocumentSize. Each side reads the peer's
// two frames in a goroutine of its own from the start, so neither side can
// block the other, and the reader doubles as a liveness check: while this
// side waits for its TPM, a peer that hangs up (or a connection closed by a
// deadline or an eviction) fails the read, which ends the context of the
// quote. A connection nobody is on any more never costs a quote.
const (
	frameNoDocument byte = iota
	frameDocument
	frameAccept
	frameReject
)

// maxRejectReason bounds the reason a validator sends back.
const maxRejectReason = 1024

func (c *transportCredentials) exchange(ctx context.Context, conn *tls.Conn, state tls.ConnectionState) (peerAttested bool, err error) {
	exporter, err := state.ExportKeyingMaterial(ExporterLabel, nil, 32)
	if err != nil {
		return false, fmt.Errorf("aTLS: TLS exporter: %w", err)
	}
	ctx, peerGone := context.WithCancelCause(ctx)
	defer peerGone(nil)
	frames := readFrames(conn, 2, peerGone)
	defer func() {
		if err != nil {
			// Unblocks the reader, which must not outlive the handshake.
			_ = conn.Close()
		}
		<-frames.done
	}()

	kind, payload := frameNoDocument, []byte(nil)
	if c.cfg.Issuer != nil {
		bindTo := c.leaf
		if c.bindingKey != nil {
			bindTo = c.bindingKey
		}
		doc, err := c.cfg.Issuer.Issue(ctx, Binding(exporter, bindTo))
		if err != nil {
			return false, fmt.Errorf("aTLS: issuing attestation document: %w", err)
		}
		kind, payload = frameDocument, doc
	}
	if err := writeFrame(conn, kind, payload); err != nil {
		return false, fmt.Errorf("aTLS: exchanging attestation documents: sending: %w", err)
	}
	peerKind, peerDoc, err := frames.next()
	if err != nil {
		return false, fmt.Errorf("aTLS: exchanging attestation documents: receiving: %w", err)
	}
	verdict := c.validatePeer(ctx, state, exporter, peerKind, peerDoc)
	reply, reason := frameAccept, []byte(nil)
	if verdict != nil {
		reply, reason = frameReject, []byte(truncate(verdict.Error(), maxRejectReason))
	}
	werr := writeFrame(conn, reply, reason)
	peerVerdict, peerReason, rerr := frames.next()
	if verdict != nil {
		// Our own rejection is the clearer error, even if the peer hung up.
		return false, verdict
	}
	if rerr == nil && peerVerdict == frameReject {
		return false, fmt.Errorf("%w: peer rejected our attestation: %s", ErrAttestation, peerReason)
	}
	if werr != nil {
		return false, fmt.Errorf("aTLS: sending our verdict: %w", werr)
	}
	if rerr != nil {
		return false, fmt.Errorf("aTLS: reading peer's verdict: %w", rerr)
	}
	if peerVerdict != frameAccept {
		return false, fmt.Errorf("aTLS: peer sent frame kind %d, want a verdict", peerVerdict)
	}
	return c.cfg.Validator != nil, nil
}

// frameReader reads a fixed number of frames in its own goroutine.
type frameReader struct {
	frames chan frame // closed after the last frame or the first error
	done   chan struct{}
}

type frame struct {
	kind    byte
	payload []byte
	err     error
}

// readFrames reads n frames from r; the first read error is also passed to
// onError (which ends the exchange's context).
func readFrames(r io.Reader, n int, onError func(error)) *frameReader {
	fr := &frameReader{frames: make(chan frame, n), done: make(chan struct{})}
	go func() {
		defer close(fr.done)
		defer close(fr.frames)
		for range n {
			kind, payload, err := readFrame(r)
			fr.frames <- frame{kind, payload, err}
			if err != nil {
				onError(fmt.Errorf("aTLS: peer connection failed: %w", err))
				return
			}
		}
	}()
	return fr
}

func (fr *frameReader) next() (byte, []byte, error) {
	f, ok := <-fr.frames
	if !ok {
		return 0, nil, errors.New("peer connection already failed")
	}
	return f.kind, f.payload, f.err
}

// validatePeer returns nil when the peer's document is acceptable (or when
// this side does not validate).
func (c *transportCredentials) validatePeer(ctx context.Context, state tls.ConnectionState, exporter []byte, kind byte, doc []byte) error {
	if c.cfg.Validator == nil {
		return nil
	}
	switch kind {
	case frameDocument:
	case frameNoDocument:
		return fmt.Errorf("%w: peer sent no attestation document", ErrAttestation)
	default:
		return fmt.Errorf("%w: peer sent frame kind %d, want a document", ErrAttestation, kind)
	}
	if len(state.PeerCertificates) == 0 {
		return fmt.Errorf("%w: peer presented no certificate to bind its document to", ErrAttestation)
	}
	if err := c.cfg.Validator.Validate(ctx, doc, Binding(exporter, state.PeerCertificates[0])); err != nil {
		return fmt.Errorf("%w: validating peer: %w", ErrAttestation, err)
	}
	return nil
}

func writeFrame(w io.Writer, kind byte, payload []byte) error {
	if len(payload) > attestation.MaxDocumentSize {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(payload), attestation.MaxDocumentSize)
	}
	buf := make([]byte, 5+len(payload))
	buf[0] = kind
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	_, err := w.Write(buf)
	return err
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, nil, errors.New("peer closed the connection (it may not speak aTLS, or rejected us)")
		}
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:5])
	if n > attestation.MaxDocumentSize {
		return 0, nil, fmt.Errorf("peer frame of %d bytes exceeds %d", n, attestation.MaxDocumentSize)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	return hdr[0], payload, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
