package atls

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

	"google.golang.org/grpc/credentials"

	"github.com/diskmapper/disk-mapper/internal/attestation"
)

// BenchmarkHandshake measures one connection setup on loopback through the
// TransportCredentials interface gRPC uses: plain TLS 1.3, aTLS with a swtpm
// quote (node attests, peer validates with a pinned AK), and aTLS with the
// development issuer (the protocol cost without the TPM).
func BenchmarkHandshake(b *testing.B) {
	cert, err := ephemeralCertificate()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("tls", func(b *testing.B) {
		server := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
		client := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
		benchHandshake(b, server, client)
	})
	b.Run("atls-tpm", func(b *testing.B) {
		n := newNode(b)
		benchHandshake(b,
			NewCredentials(Config{Issuer: n.issuer, Certificate: &cert}),
			NewCredentials(Config{Validator: pinnedValidator(b, nil, n.ak)}))
	})
	b.Run("atls-dev", func(b *testing.B) {
		benchHandshake(b,
			NewCredentials(Config{Issuer: attestation.NewDevIssuer(nil), Certificate: &cert}),
			NewCredentials(Config{Validator: attestation.NewDevValidator(nil)}))
	})
}

func benchHandshake(b *testing.B, server, client credentials.TransportCredentials) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer lis.Close()
	serverErr := make(chan error, 1)
	go func() {
		for {
			raw, err := lis.Accept()
			if err != nil {
				return
			}
			conn, _, err := server.ServerHandshake(raw)
			if err != nil {
				raw.Close()
				serverErr <- err
				return
			}
			conn.Close()
		}
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		raw, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		conn, _, err := client.ClientHandshake(context.Background(), lis.Addr().String(), raw)
		if err != nil {
			b.Fatalf("client handshake: %v (server: %v)", err, drain(serverErr))
		}
		conn.Close()
	}
}

func drain(c chan error) error {
	select {
	case err := <-c:
		return err
	default:
		return nil
	}
}
