// Package atls provides attested TLS as gRPC transport credentials.
//
// A connection runs a TLS 1.3 handshake, then, before gRPC uses the
// connection, the two sides exchange attestation documents bound to the
// session (see Binding and the frame protocol in exchange.go). A side with
// an Issuer attests itself; a side with a Validator requires and checks the
// peer's document. Either side may do both, or neither.
package atls

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/logging"
)

// ExporterLabel is the RFC 8446 §7.5 exporter label of the binding.
const ExporterLabel = "disk-mapper aTLS"

// DefaultHandshakeTimeout bounds TLS handshake plus attestation exchange
// when Config.HandshakeTimeout is zero.
const DefaultHandshakeTimeout = 10 * time.Second

// Config configures one side of an aTLS connection.
type Config struct {
	Issuer    attestation.Issuer    // nil: this side does not attest
	Validator attestation.Validator // nil: this side does not check the peer's attestation
	// Certificate is this side's TLS certificate; nil: an ephemeral
	// self-signed ECDSA P-256 certificate (enough for an attester, whose
	// key is bound by the attestation).
	Certificate *tls.Certificate
	// RootCAs, when set, requires the peer's certificate to chain to it
	// (pinning the key service, or admitting an operator) with the
	// peer's role as extended key usage: server auth for a key service,
	// client auth for an operator. Only the chain is checked, not a host
	// name: key-service endpoints are discovered IP addresses.
	RootCAs *x509.CertPool
	// HandshakeTimeout bounds TLS handshake plus attestation exchange;
	// zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	Log              *zap.Logger
}

// AuthInfo is what gRPC handlers see as the peer's auth info.
type AuthInfo struct {
	credentials.TLSInfo
	// PeerAttested is true when this side validated the peer's document.
	PeerAttested bool
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "atls" }

// ErrAttestation wraps every handshake failure caused by attestation (as
// opposed to TLS or I/O).
var ErrAttestation = errors.New("aTLS attestation failed")

type transportCredentials struct {
	cfg        Config
	cert       tls.Certificate
	leaf       *x509.Certificate
	certErr    error
	serverName string

	// bindingKey overrides the certificate whose key this side binds into
	// its own document; tests use it to play an attacker. nil: own leaf.
	bindingKey *x509.Certificate
}

// NewCredentials returns gRPC transport credentials usable on the client
// and the server side.
func NewCredentials(cfg Config) credentials.TransportCredentials {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	c := &transportCredentials{cfg: cfg}
	if cfg.Certificate != nil {
		c.cert = *cfg.Certificate
	} else {
		c.cert, c.certErr = ephemeralCertificate()
	}
	if c.certErr == nil {
		c.leaf, c.certErr = leafOf(c.cert)
	}
	return c
}

// Binding is what the attester quotes and the validator recomputes:
// SHA-256(exporter || SHA-256(attester certificate's SubjectPublicKeyInfo)).
func Binding(exporter []byte, attesterCert *x509.Certificate) []byte {
	spki := sha256.Sum256(attesterCert.RawSubjectPublicKeyInfo)
	h := sha256.New()
	h.Write(exporter)
	h.Write(spki[:])
	return h.Sum(nil)
}

func (c *transportCredentials) tlsConfig(isClient bool) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, // the exporter binding needs TLS 1.3
		NextProtos: []string{"h2"},
		// Chain verification (when RootCAs is set) happens in
		// verifyPeerChain; attestation replaces it otherwise.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return c.verifyPeerChain(raw, peerUsage(isClient))
		},
		Certificates: []tls.Certificate{c.cert},
	}
	if isClient {
		cfg.ServerName = c.serverName
		if c.cfg.Issuer == nil && c.cfg.Certificate == nil {
			cfg.Certificates = nil
		}
	} else if c.cfg.Validator != nil || c.cfg.RootCAs != nil {
		// The client's key is what its document is bound to.
		cfg.ClientAuth = tls.RequireAnyClientCert
	}
	return cfg
}

// peerUsage is the extended key usage the peer's CA-issued certificate
// must carry: a client checks a server (the JoinService), a server checks a
// client (an operator). Without it, either certificate of the cluster CA
// would pass as the other.
func peerUsage(isClient bool) x509.ExtKeyUsage {
	if isClient {
		return x509.ExtKeyUsageServerAuth
	}
	return x509.ExtKeyUsageClientAuth
}

func (c *transportCredentials) verifyPeerChain(raw [][]byte, usage x509.ExtKeyUsage) error {
	if len(raw) == 0 {
		return errors.New("peer sent no certificate")
	}
	if c.cfg.RootCAs == nil {
		return nil
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		cert, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("parsing peer certificate: %w", err)
		}
		certs[i] = cert
	}
	inter := x509.NewCertPool()
	for _, cert := range certs[1:] {
		inter.AddCert(cert)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         c.cfg.RootCAs,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
		return fmt.Errorf("peer certificate is not signed by the configured CA: %w", err)
	}
	return nil
}

// ClientHandshake implements credentials.TransportCredentials.
func (c *transportCredentials) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if c.certErr != nil {
		return nil, nil, c.certErr
	}
	deadline := time.Now().Add(c.cfg.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	cfg := c.tlsConfig(true)
	if cfg.ServerName == "" {
		if host, _, err := net.SplitHostPort(authority); err == nil {
			cfg.ServerName = host
		}
	}
	conn, info, err := c.handshake(ctx, tls.Client(raw, cfg), raw, deadline)
	if err != nil {
		return nil, nil, err
	}
	// Nobody else clears the deadline on the client side.
	_ = raw.SetDeadline(time.Time{})
	return conn, info, nil
}

// ServerHandshake implements credentials.TransportCredentials. It leaves the
// handshake deadline on the connection: gRPC's server clears it after the
// HTTP/2 preface, so a peer that attests and then stalls is still cut off.
func (c *transportCredentials) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if c.certErr != nil {
		return nil, nil, c.certErr
	}
	deadline := time.Now().Add(c.cfg.HandshakeTimeout)
	// The source lets a background issuer cap the quotes of one peer.
	ctx := attestation.WithQuoteSource(context.Background(), hostOf(raw.RemoteAddr()))
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	return c.handshake(ctx, tls.Server(raw, c.tlsConfig(false)), raw, deadline)
}

func (c *transportCredentials) handshake(ctx context.Context, conn *tls.Conn, raw net.Conn, deadline time.Time) (net.Conn, credentials.AuthInfo, error) {
	if err := raw.SetDeadline(deadline); err != nil {
		return nil, nil, err
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("aTLS: TLS handshake: %w", err)
	}
	state := conn.ConnectionState()
	attested, err := c.exchange(ctx, conn, state)
	if err != nil {
		c.cfg.Log.Warn("aTLS handshake failed", logging.Event("atls_handshake_failed"),
			zap.String("peer", raw.RemoteAddr().String()), zap.Error(err))
		_ = conn.Close()
		return nil, nil, err
	}
	info := AuthInfo{
		TLSInfo: credentials.TLSInfo{
			State:          state,
			CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		},
		PeerAttested: attested,
	}
	return conn, info, nil
}

// Info implements credentials.TransportCredentials.
func (c *transportCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "atls", SecurityVersion: "1.3", ServerName: c.serverName}
}

// Clone implements credentials.TransportCredentials.
func (c *transportCredentials) Clone() credentials.TransportCredentials {
	cp := *c
	return &cp
}

// OverrideServerName implements credentials.TransportCredentials.
func (c *transportCredentials) OverrideServerName(name string) error {
	c.serverName = name
	return nil
}

// hostOf is the IP address of addr without its port.
func hostOf(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil {
		return host
	}
	return addr.String()
}
