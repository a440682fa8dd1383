package atls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/credentials"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/constants"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func wantErr(t *testing.T, err error, substr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("RPC succeeded, want failure containing %q", substr)
	}
	t.Logf("error: %v", err)
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not contain %q", err, substr)
	}
}

// The node is the server (RecoveryServer); the operator validates it.
func TestNodeAsServer(t *testing.T) {
	n := newNode(t)
	addr := serveHealth(t, NewCredentials(Config{Issuer: n.issuer}))
	if err := checkHealth(t, addr, NewCredentials(Config{Validator: pinnedValidator(t, nil, n.ak)})); err != nil {
		t.Fatalf("health over aTLS: %v", err)
	}
}

// The node is the client (RejoinClient); the JoinService validates it and
// the node pins the JoinService's CA.
func TestNodeAsClient(t *testing.T) {
	n := newNode(t)
	ca := newTestCA(t)
	addr := serveHealth(t, NewCredentials(Config{
		Validator:   pinnedValidator(t, nil, n.ak),
		Certificate: ca.issue(t),
	}))
	if err := checkHealth(t, addr, NewCredentials(Config{Issuer: n.issuer, RootCAs: ca.pool})); err != nil {
		t.Fatalf("health over aTLS: %v", err)
	}

	t.Run("key service from another CA", func(t *testing.T) {
		other := newTestCA(t)
		err := checkHealth(t, addr, NewCredentials(Config{Issuer: n.issuer, RootCAs: other.pool}))
		wantErr(t, err, "peer certificate is not signed by the configured CA")
	})

	// An operator's (client) certificate of the same CA is no key service.
	t.Run("key service with a client certificate of the CA", func(t *testing.T) {
		posing := serveHealth(t, NewCredentials(Config{
			Validator:   pinnedValidator(t, nil, n.ak),
			Certificate: ca.issueFor(t, x509.ExtKeyUsageClientAuth),
		}))
		err := checkHealth(t, posing, NewCredentials(Config{Issuer: n.issuer, RootCAs: ca.pool}))
		wantErr(t, err, "peer certificate is not signed by the configured CA")
	})
}

// The node is the server (RecoveryServer) and takes only operators of the
// cluster CA: a client certificate, not the JoinService's server one.
func TestNodeAsServerWantsAnOperatorCertificate(t *testing.T) {
	n := newNode(t)
	ca := newTestCA(t)
	addr := serveHealth(t, NewCredentials(Config{Issuer: n.issuer, RootCAs: ca.pool}))
	operator := func(cert *tls.Certificate) credentials.TransportCredentials {
		return NewCredentials(Config{Validator: pinnedValidator(t, nil, n.ak), Certificate: cert})
	}
	if err := checkHealth(t, addr, operator(ca.issueFor(t, x509.ExtKeyUsageClientAuth))); err != nil {
		t.Fatalf("operator certificate: %v", err)
	}
	if err := checkHealth(t, addr, operator(ca.issueFor(t, x509.ExtKeyUsageServerAuth))); err == nil {
		t.Fatal("the JoinService's (server) certificate of the CA was taken as an operator's")
	}
}

// The JoinService's rejection reason reaches the node, and the JoinService
// logs it.
func TestServerRejectionReachesClient(t *testing.T) {
	n := newNode(t)
	other := newNode(t)
	core, logs := observer.New(zap.WarnLevel)
	addr := serveHealth(t, NewCredentials(Config{Validator: pinnedValidator(t, nil, other.ak), Log: zap.New(core)}))
	err := checkHealth(t, addr, NewCredentials(Config{Issuer: n.issuer}))
	wantErr(t, err, "peer rejected our attestation")
	wantErr(t, err, "AK is not trusted")
	// The server logs after it has sent its rejection, so the client can see
	// the error first; hangGuard only keeps a broken build from hanging.
	const hangGuard = 10 * time.Second
	logged := func() bool { return logs.FilterField(zap.String("event", "atls_handshake_failed")).Len() > 0 }
	for deadline := time.Now().Add(hangGuard); !logged() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if !logged() {
		t.Error("server did not log the failed handshake")
	}
}

func TestReplayedDocument(t *testing.T) {
	n := newNode(t)
	// Both servers use the same TLS key, so only the session differs.
	cert, err := ephemeralCertificate()
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	v := NewCredentials(Config{Validator: pinnedValidator(t, nil, n.ak)})
	addr := serveHealth(t, NewCredentials(Config{Issuer: rec.wrap(n.issuer), Certificate: &cert}))
	if err := checkHealth(t, addr, v); err != nil {
		t.Fatal(err)
	}
	captured := rec.doc()
	if captured == nil {
		t.Fatal("no document captured")
	}
	replay := issuerFunc(func(context.Context, []byte) ([]byte, error) { return captured, nil })
	addr2 := serveHealth(t, NewCredentials(Config{Issuer: replay, Certificate: &cert}))
	wantErr(t, checkHealth(t, addr2, v), "qualifying data does not match the binding")
}

// A genuine quote bound to a different TLS key (an attacker relaying a
// node's attestation for its own key) is rejected.
func TestDifferentTLSKey(t *testing.T) {
	n := newNode(t)
	attacker := NewCredentials(Config{Issuer: n.issuer}).(*transportCredentials)
	otherCert, err := ephemeralCertificate()
	if err != nil {
		t.Fatal(err)
	}
	attacker.bindingKey, err = leafOf(otherCert)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveHealth(t, attacker)
	wantErr(t, checkHealth(t, addr, NewCredentials(Config{Validator: pinnedValidator(t, nil, n.ak)})),
		"qualifying data does not match the binding")
}

func TestWrongBinding(t *testing.T) {
	n := newNode(t)
	// A node that quotes over some other nonce.
	wrong := issuerFunc(func(ctx context.Context, b []byte) ([]byte, error) {
		other := sha256.Sum256(b)
		return n.issuer.Issue(ctx, other[:])
	})
	addr := serveHealth(t, NewCredentials(Config{Issuer: wrong}))
	wantErr(t, checkHealth(t, addr, NewCredentials(Config{Validator: pinnedValidator(t, nil, n.ak)})),
		"qualifying data does not match the binding")
}

func TestTamperedQuote(t *testing.T) {
	n := newNode(t)
	tamper := issuerFunc(func(ctx context.Context, b []byte) ([]byte, error) {
		doc, err := n.issuer.Issue(ctx, b)
		if err != nil {
			return nil, err
		}
		var d map[string]any
		if err := json.Unmarshal(doc, &d); err != nil {
			return nil, err
		}
		// Flip a byte of the firmware version inside the signed quote.
		q, err := base64.StdEncoding.DecodeString(d["quote"].(string))
		if err != nil {
			return nil, err
		}
		q[len(q)-40] ^= 1
		d["quote"] = q
		return json.Marshal(d)
	})
	addr := serveHealth(t, NewCredentials(Config{Issuer: tamper}))
	wantErr(t, checkHealth(t, addr, NewCredentials(Config{Validator: pinnedValidator(t, nil, n.ak)})),
		"quote signature is not valid")
}

func TestUntrustedAK(t *testing.T) {
	n := newNode(t)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveHealth(t, NewCredentials(Config{Issuer: n.issuer}))
	wantErr(t, checkHealth(t, addr, NewCredentials(Config{Validator: pinnedValidator(t, nil, &k.PublicKey)})),
		"AK is not trusted")
}

func TestAKCertificateFromAnotherCA(t *testing.T) {
	n := newNode(t)
	platform, other := newTestCA(t), newTestCA(t)
	tc, err := n.tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	_, err = attestation.Provision(tc, platform.cert, platform.key)
	tc.Close()
	if err != nil {
		t.Fatal(err)
	}
	// The issuer reads the NV certificate when it is created.
	iss, err := attestation.NewTPMIssuer(n.tpm.Open, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	addr := serveHealth(t, NewCredentials(Config{Issuer: iss}))

	trusting := func(pool *x509.CertPool) *transportCredentials {
		v, err := attestation.NewTPMValidator(attestation.ValidatorConfig{AKRoots: pool})
		if err != nil {
			t.Fatal(err)
		}
		return NewCredentials(Config{Validator: v}).(*transportCredentials)
	}
	if err := checkHealth(t, addr, trusting(platform.pool)); err != nil {
		t.Fatalf("AK certificate from the platform CA: %v", err)
	}
	wantErr(t, checkHealth(t, addr, trusting(other.pool)), "does not chain to the platform CA")
}

func TestPCRMismatch(t *testing.T) {
	n := newNode(t)
	want := sha256.Sum256([]byte("the image we expect"))
	addr := serveHealth(t, NewCredentials(Config{Issuer: n.issuer}))
	m := attestation.Measurements{constants.PCRImage: attestation.ExtendedValue(want[:])}
	wantErr(t, checkHealth(t, addr, NewCredentials(Config{Validator: pinnedValidator(t, m, n.ak)})),
		"PCR 11 mismatch")

	// After measuring the expected image, the same validator accepts.
	tc, err := n.tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	err = attestation.ExtendPCR(tc, constants.PCRImage, want[:])
	tc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkHealth(t, addr, NewCredentials(Config{Validator: pinnedValidator(t, m, n.ak)})); err != nil {
		t.Fatalf("after measuring: %v", err)
	}
}

func TestPCR15AlreadyExtended(t *testing.T) {
	n := newNode(t)
	if err := attestation.NewMarker(n.tpm.Open).MarkNodeAsBootstrapped(bytes.Repeat([]byte{3}, 32)); err != nil {
		t.Fatal(err)
	}
	addr := serveHealth(t, NewCredentials(Config{Issuer: n.issuer}))
	wantErr(t, checkHealth(t, addr, NewCredentials(Config{Validator: pinnedValidator(t, nil, n.ak)})),
		"PCR 15 is not zero")
}

func TestPeerSendsNoDocument(t *testing.T) {
	n := newNode(t)
	addr := serveHealth(t, NewCredentials(Config{}))
	wantErr(t, checkHealth(t, addr, NewCredentials(Config{Validator: pinnedValidator(t, nil, n.ak)})),
		"peer sent no attestation document")
}

func TestDevCredentials(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	log := zap.New(core)
	addr := serveHealth(t, NewCredentials(Config{Issuer: attestation.NewDevIssuer(log)}))
	if err := checkHealth(t, addr, NewCredentials(Config{Validator: attestation.NewDevValidator(log)})); err != nil {
		t.Fatal(err)
	}
	if logs.FilterField(zap.String("event", "attestation_dev_validate")).Len() != 1 ||
		logs.FilterField(zap.String("event", "attestation_dev_issue")).Len() != 1 {
		t.Fatalf("want one warning each from dev issuer and validator, got %v", logs.All())
	}
}
