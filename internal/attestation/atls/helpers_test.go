package atls

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
	"github.com/diskmapper/disk-mapper/internal/testutil"
)

// serveHealth runs a real gRPC server with the health service on
// 127.0.0.1 and returns its address.
func serveHealth(t testing.TB, creds credentials.TransportCredentials) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() { _ = srv.Serve(lis); close(done) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

// checkHealth makes one health RPC over creds.
func checkHealth(t testing.TB, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
	return err
}

// node is a TPM-backed attester with its validator-side trust.
type node struct {
	tpm    *attestationtest.SwTPM
	issuer attestation.Issuer
	ak     crypto.PublicKey
}

func newNode(t testing.TB) *node {
	t.Helper()
	tpm := attestationtest.StartSwTPM(t, "")
	iss, err := attestation.NewTPMIssuer(tpm.Open, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return &node{tpm: tpm, issuer: iss, ak: testutil.AKPublicKey(t, tpm)}
}

func pinnedValidator(t testing.TB, m attestation.Measurements, aks ...crypto.PublicKey) attestation.Validator {
	t.Helper()
	v, err := attestation.NewTPMValidator(attestation.ValidatorConfig{PinnedAKs: aks, Measurements: m})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// issuerFunc adapts a function to attestation.Issuer (tests play attackers).
type issuerFunc func(ctx context.Context, binding []byte) ([]byte, error)

func (f issuerFunc) Issue(ctx context.Context, b []byte) ([]byte, error) { return f(ctx, b) }

// recorder keeps the last document an issuer produced.
type recorder struct {
	mu   sync.Mutex
	last []byte
}

func (r *recorder) wrap(iss attestation.Issuer) attestation.Issuer {
	return issuerFunc(func(ctx context.Context, b []byte) ([]byte, error) {
		doc, err := iss.Issue(ctx, b)
		r.mu.Lock()
		r.last = doc
		r.mu.Unlock()
		return doc, err
	})
}

func (r *recorder) doc() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// testCA issues TLS certificates, e.g. the JoinService's.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	cert, key, err := attestation.NewPlatformCA("test key-service CA")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t testing.TB) *tls.Certificate {
	t.Helper()
	return ca.issueFor(t, x509.ExtKeyUsageServerAuth)
}

// issueFor issues a certificate for one purpose (server or client).
func (ca *testCA) issueFor(t testing.TB, usage x509.ExtKeyUsage) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "joinservice"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
