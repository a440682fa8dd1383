package atls

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
)

// A peer that completes TLS and hangs up while the node waits for its TPM
// costs no quote: the server's handshake returns as soon as the peer is
// gone, not at its handshake deadline, and the TPM never sees a TPM2_Quote
// for it.
func TestPeerGoneWhileWaitingForTheTPMCostsNoQuote(t *testing.T) {
	probe := attestationtest.NewTPMProbe(attestationtest.StartSwTPM(t, "").Open)
	iss, err := attestation.NewTPMIssuer(probe.Open, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	// A minute: only the peer's hang-up can end the handshake in time.
	server := NewCredentials(Config{Issuer: iss, HandshakeTimeout: time.Minute})

	held, release := probe.HoldQuotes()
	defer release()
	busy := make(chan error, 1)
	go func() {
		_, err := iss.Issue(context.Background(), make([]byte, attestation.BindingSize))
		busy <- err
	}()
	<-held // another quote holds the TPM

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	handshake := make(chan error, 1)
	go func() {
		raw, err := lis.Accept()
		if err != nil {
			handshake <- err
			return
		}
		conn, _, err := server.ServerHandshake(raw)
		if err == nil {
			conn.Close()
		}
		handshake <- err
	}()
	peer, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{
		InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	peer.Close()

	// hangGuard is far below the handshake deadline and far above the
	// milliseconds the server needs to notice the hang-up.
	const hangGuard = 5 * time.Second
	select {
	case err := <-handshake:
		if err == nil {
			t.Fatal("handshake with a peer that hung up succeeded")
		}
		t.Logf("handshake: %v", err)
	case <-time.After(hangGuard):
		release()
		<-handshake
		t.Fatalf("the handshake went on waiting for the TPM after the peer hung up (%d quotes in the end)", probe.Quotes())
	}
	release()
	if err := <-busy; err != nil {
		t.Fatal(err)
	}
	if n := probe.Quotes(); n != 1 {
		t.Fatalf("%d TPM2_Quote commands, want 1: the hung-up peer must cost none", n)
	}
}
