package joinservice

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"google.golang.org/grpc/credentials"
)

// atlsPair returns the service's credentials (test certificate, development
// validator) and a node's (development issuer, the test CA as RootCAs), so
// tests run the real aTLS handshake in both directions.
func atlsPair(tb testing.TB) (service, node credentials.TransportCredentials) {
	tb.Helper()
	certs, err := GenerateTestCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certs.CertPEM, certs.KeyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(certs.CAPEM) {
		tb.Fatal("CA PEM")
	}
	service = atls.NewCredentials(atls.Config{Validator: attestation.NewDevValidator(nil), Certificate: &cert})
	node = atls.NewCredentials(atls.Config{Issuer: attestation.NewDevIssuer(nil), RootCAs: roots})
	return service, node
}

// startService serves s on a loopback port until the test ends.
func startService(tb testing.TB, s *Server, creds credentials.TransportCredentials) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis, creds) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Serve: %v", err)
		}
		s.Close()
	})
	return lis.Addr().String()
}

const testUUID = "0a1b2c3d-0000-4000-8000-000000000001"
