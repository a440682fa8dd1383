package recoveryserver

import (
	"context"
	"crypto"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
	"github.com/diskmapper/disk-mapper/internal/testutil"
)

// Issue 9 item 2: unauthenticated connections must not starve the TPM. These
// tests run the real RecoveryServer over real aTLS on a real swtpm; the
// probe between issuer and swtpm counts the TPM2_Quote commands and gives
// each the 50 ms a hardware TPM takes.

const slowQuote = 50 * time.Millisecond

// tpmNode is the node side: one TPMIssuer shared, as in the daemon, by the
// RejoinClient (Issue, foreground) and the RecoveryServer (through
// NewBackgroundIssuer).
type tpmNode struct {
	probe  *attestationtest.TPMProbe
	issuer attestation.Issuer
	ak     crypto.PublicKey
}

func newTPMNode(t testing.TB) *tpmNode {
	t.Helper()
	swtpm := attestationtest.StartSwTPM(t, "")
	probe := attestationtest.NewTPMProbe(swtpm.Open)
	iss, err := attestation.NewTPMIssuer(probe.Open, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return &tpmNode{probe: probe, issuer: iss, ak: testutil.AKPublicKey(t, swtpm)}
}

// withNodeCredentials wires the server as cmd/disk-mapper does. The
// connection bounds are lifted so that every flood connection reaches its
// quote: the quote bounds, not eviction, are under test.
func (n *tpmNode) withNodeCredentials() option {
	return func(c *Config) {
		c.MaxConnections, c.MaxConnectionsPerIP = 1000, 1000
		c.Credentials = atls.NewCredentials(atls.Config{
			Issuer: attestation.NewBackgroundIssuer(n.issuer, attestation.QuoteLimits{}),
			Log:    c.Log.Named("atls"),
		})
	}
}

// operator returns `dmctl recover`'s credentials: aTLS pinning the node's AK.
func (n *tpmNode) operator(t testing.TB) credentials.TransportCredentials {
	t.Helper()
	v, err := attestation.NewTPMValidator(attestation.ValidatorConfig{PinnedAKs: []crypto.PublicKey{n.ak}})
	if err != nil {
		t.Fatal(err)
	}
	return atls.NewCredentials(atls.Config{Validator: v})
}

// rejoinQuote is the RejoinClient's quote, timed.
func (n *tpmNode) rejoinQuote(t testing.TB) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := n.issuer.Issue(context.Background(), make([]byte, attestation.BindingSize)); err != nil {
		t.Fatalf("RejoinClient quote: %v", err)
	}
	return time.Since(start)
}

// floodTLS opens n TLS connections to addr, pacing them every pace (0: all
// at once), and returns those whose TLS handshake finished. Each makes the
// server ask its TPM for a quote. They send nothing else.
func floodTLS(tb testing.TB, addr string, n int, pace time.Duration) []net.Conn {
	tb.Helper()
	return floodTLSPaced(tb, addr, n, pace, func() {})
}

// floodTLSWith is floodTLS, all at once, calling up after each handshake.
func floodTLSWith(tb testing.TB, addr string, n int, up func()) []net.Conn {
	tb.Helper()
	return floodTLSPaced(tb, addr, n, 0, up)
}

func floodTLSPaced(tb testing.TB, addr string, n int, pace time.Duration, up func()) []net.Conn {
	tb.Helper()
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Go(func() {
			d := &net.Dialer{Timeout: 10 * time.Second}
			c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
			if err != nil {
				return // refused or evicted at the connection cap
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			up()
		})
		if pace > 0 {
			time.Sleep(pace)
		}
	}
	wg.Wait()
	return conns
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

func countEvent(logs *testutil.LogBuffer, event string) int {
	return strings.Count(logs.String(), `"event":"`+event+`"`)
}

// 100 connections opened in 250 ms, held open, against a TPM that takes
// 50 ms per quote (the issue's measurement: the RejoinClient's quote was
// 5 s late, and Serve returned 5 s after cancel). The RejoinClient's quotes
// must wait for at most the quote the TPM is running, and Serve must stop
// within about one quote.
func TestQuoteFloodDelaysNeitherRejoinClientNorStop(t *testing.T) {
	n := newTPMNode(t)
	n.probe.SetQuoteDelay(slowQuote)
	h := startServer(t, &keyChecker{}, n.withNodeCredentials())

	flood := make(chan []net.Conn, 1)
	go func() { flood <- floodTLS(t, h.addr, 100, 2500*time.Microsecond) }()
	time.Sleep(100 * time.Millisecond) // the flood is under way
	var worst time.Duration
	for range 3 {
		worst = max(worst, n.rejoinQuote(t))
	}
	conns := <-flood
	defer closeAll(conns)
	worst = max(worst, n.rejoinQuote(t))
	// Own quote plus the one running is 100 ms (measured 156–200 ms, and
	// up to 540 ms with a VM suite on the same 2 cores); the old queue took
	// 6 s. The bound sits between, so load cannot fail the test.
	const rejoinBound = 2500 * time.Millisecond
	t.Logf("worst RejoinClient quote under the flood: %v (%d flood connections, %d quotes)", worst, len(conns), n.probe.Quotes())
	if worst > rejoinBound {
		t.Errorf("RejoinClient quote took %v under the flood, want ≤ %v", worst, rejoinBound)
	}

	// A second wave keeps quotes waiting while Serve is cancelled.
	go func() { flood <- floodTLS(t, h.addr, 100, 0) }()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	h.cancel()
	h.waitServe(t)
	stop := time.Since(start)
	closeAll(<-flood)
	const stopBound = 2500 * time.Millisecond // ~one quote expected (24–39 ms idle); old code: 6.45 s
	t.Logf("Serve returned %v after cancel", stop)
	if stop > stopBound {
		t.Errorf("Serve returned %v after cancel under the flood, want ≤ %v", stop, stopBound)
	}
}

// Connections that close while they wait for the TPM cost no quote, and the
// server goes on serving: the operator's push after the flood succeeds and
// costs exactly its own quote.
func TestClosedConnectionsCostNoQuote(t *testing.T) {
	verifyNoLeaks(t)
	n := newTPMNode(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey}, n.withNodeCredentials())

	held, release := n.probe.HoldQuotes()
	defer release()
	rejoin := make(chan time.Duration, 1)
	go func() { rejoin <- n.rejoinQuote(t) }()
	<-held // the RejoinClient's quote holds the TPM

	const flood = 50
	conns := floodTLS(t, h.addr, flood, 0)
	closeAll(conns)
	// Every one of them ends its handshake (most refused at once at the
	// quote limit, the rest when they hang up) while the TPM is still busy.
	const hangGuard = 5 * time.Second
	for deadline := time.Now().Add(hangGuard); countEvent(h.logs, "atls_handshake_failed") < len(conns); {
		if time.Now().After(deadline) {
			t.Errorf("%d of %d closed connections still wait for the TPM after %v",
				len(conns)-countEvent(h.logs, "atls_handshake_failed"), len(conns), hangGuard)
			break
		}
		time.Sleep(time.Millisecond)
	}
	release()
	<-rejoin

	cc := dial(t, h.addr, n.operator(t))
	if _, err := push(testContext(t), cc, s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("operator push after the flood: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	cc.Close()
	// Serve has returned, so no handshake is left to quote later.
	quotes := n.probe.Quotes()
	t.Logf("%d connections closed; %d quotes in all", len(conns), quotes)
	if quotes != 2 {
		t.Errorf("%d TPM2_Quote commands in all, want 2 (the RejoinClient's and the operator's): the %d closed connections cost %d",
			quotes, len(conns), quotes-2)
	}
}
