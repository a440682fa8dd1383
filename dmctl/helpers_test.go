package dmctl

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/recoveryserver"
	"google.golang.org/grpc/credentials"
)

// diskUUID returns a distinct, well-formed LUKS UUID per i.
func diskUUID(i int) string { return fmt.Sprintf("0a1b2c3d-0000-4000-8000-%012d", i) }

// testNode is a real RecoveryServer on a loopback port whose check accepts
// exactly the key derived from secret for its disk.
type testNode struct {
	uuid     string
	addr     string
	done     chan error // Serve's result
	mu       sync.Mutex
	accepted unlock.Key // copy of the accepted key
}

// nodeCredentials: aTLS with the development issuer (no TPM here; the TPM
// validator has its own swtpm tests in internal/attestation).
func nodeCredentials() credentials.TransportCredentials {
	return atls.NewCredentials(atls.Config{Issuer: attestation.NewDevIssuer(nil)})
}

// slowIssuer models a node's TPM: a quote takes time on the node (swtpm or
// a hardware TPM), time that overlaps between nodes, unlike our CPU.
type slowIssuer struct {
	attestation.Issuer
	latency time.Duration
}

func (s slowIssuer) Issue(ctx context.Context, binding []byte) ([]byte, error) {
	time.Sleep(s.latency)
	return s.Issuer.Issue(ctx, binding)
}

func nodeCredentialsWithQuoteLatency(latency time.Duration) credentials.TransportCredentials {
	return atls.NewCredentials(atls.Config{Issuer: slowIssuer{Issuer: attestation.NewDevIssuer(nil), latency: latency}})
}

func operatorCredentials() credentials.TransportCredentials {
	return atls.NewCredentials(atls.Config{Validator: attestation.NewDevValidator(nil)})
}

func listen(tb testing.TB) net.Listener {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return lis
}

// startNode serves on lis until a key is accepted or the test ends.
func startNode(tb testing.TB, lis net.Listener, secret masterkey.MasterSecret, uuid string, creds credentials.TransportCredentials) *testNode {
	tb.Helper()
	want, err := secret.DiskKey(uuid)
	if err != nil {
		tb.Fatal(err)
	}
	n := &testNode{uuid: uuid, addr: lis.Addr().String(), done: make(chan error, 1)}
	check := func(_ context.Context, k unlock.Key) error {
		if !bytes.Equal(k.DiskKey, want) {
			return fmt.Errorf("test keyslot: %w", unlock.ErrWrongKey)
		}
		n.mu.Lock()
		n.accepted = unlock.Key{
			DiskKey:           bytes.Clone(k.DiskKey),
			MeasurementSecret: bytes.Clone(k.MeasurementSecret),
			MeasurementSalt:   bytes.Clone(k.MeasurementSalt),
		}
		n.mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := recoveryserver.New(recoveryserver.Config{DiskUUID: uuid, Listener: lis, Credentials: creds})
	go func() { n.done <- srv.Serve(ctx, check) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
			tb.Errorf("recovery server %s did not stop", n.addr)
		}
	})
	return n
}

// waitAccepted waits for Serve to return after an accepted key.
func (n *testNode) waitAccepted(tb testing.TB) unlock.Key {
	tb.Helper()
	select {
	case err := <-n.done:
		n.done <- err // for Cleanup
		if err != nil {
			tb.Fatalf("node %s: Serve = %v, want nil (key accepted)", n.addr, err)
		}
	case <-time.After(10 * time.Second):
		tb.Fatalf("node %s did not accept a key", n.addr)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.accepted
}

// freeAddr returns a loopback address nothing listens on (yet).
func freeAddr(tb testing.TB) string {
	tb.Helper()
	lis := listen(tb)
	addr := lis.Addr().String()
	lis.Close()
	return addr
}
