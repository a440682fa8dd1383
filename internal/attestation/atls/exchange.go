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
// payload at most attestation.MaxDocumentSize. Both sides write before they
// read, so the writes happen in a goroutine: neither side can block the other.
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
	peerKind, peerDoc, err := writeThenRead(conn, kind, payload)
	if err != nil {
		return false, fmt.Errorf("aTLS: exchanging attestation documents: %w", err)
	}

	verdict := c.validatePeer(ctx, state, exporter, peerKind, peerDoc)
	reply, reason := frameAccept, []byte(nil)
	if verdict != nil {
		reply, reason = frameReject, []byte(truncate(verdict.Error(), maxRejectReason))
	}
	peerVerdict, peerReason, err := writeThenRead(conn, reply, reason)
	if verdict != nil {
		// Our own rejection is the clearer error, even if the peer hung up.
		return false, verdict
	}
	if err != nil {
		return false, fmt.Errorf("aTLS: reading peer's verdict: %w", err)
	}
	switch peerVerdict {
	case frameAccept:
	case frameReject:
		return false, fmt.Errorf("%w: peer rejected our attestation: %s", ErrAttestation, peerReason)
	default:
		return false, fmt.Errorf("aTLS: peer sent frame kind %d, want a verdict", peerVerdict)
	}
	return c.cfg.Validator != nil, nil
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

// writeThenRead sends one frame and reads one, concurrently.
func writeThenRead(conn *tls.Conn, kind byte, payload []byte) (byte, []byte, error) {
	werr := make(chan error, 1)
	go func() { werr <- writeFrame(conn, kind, payload) }()
	peerKind, peerPayload, rerr := readFrame(conn)
	if err := <-werr; err != nil {
		return 0, nil, fmt.Errorf("sending: %w", err)
	}
	if rerr != nil {
		return 0, nil, fmt.Errorf("receiving: %w", rerr)
	}
	return peerKind, peerPayload, nil
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
