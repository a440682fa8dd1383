package recoveryserver

import (
	"context"
	"crypto"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/joinservice"
	"github.com/diskmapper/disk-mapper/rejoinclient"
)

// BenchmarkTimeToKeyUnderQuoteFlood (issue 9 item 2, DESIGN.md §8): a node
// whose TPM is swtpm runs the real RecoveryServer (aTLS through
// NewBackgroundIssuer, as cmd/disk-mapper wires it) and the real
// RejoinClient (aTLS, the same TPMIssuer's foreground Issue) against a real
// JoinService that validates the node's quote with its pinned AK. Per
// iteration:
//
//   - base: time to key, RejoinClient start → ticket in the check;
//   - flood: 200 TLS connections to port 9999 finish their handshake (each
//     makes the server want a quote), close at once, and the time to key is
//     measured from that moment;
//   - stop: a second wave of 200 TLS connections is opened and kept; once
//     100 are up, Serve is cancelled, and stop is cancel → Serve returned.
//
// Reported: flood/base (target ≤ 1.5), base-ms, flood-ms, stop-ms (target
// ≤ 500), and flood-quotes: TPM2_Quote commands during the flooded time to
// key beyond the RejoinClient's own (the closed connections should cost
// none). "caps-lifted" raises the connection bounds so that all 200
// connections reach the quote path (the TPM's worst case); "defaults" is
// the daemon's configuration, where the per-IP connection cap evicts most
// of them first.
func BenchmarkTimeToKeyUnderQuoteFlood(b *testing.B) {
	b.Run("caps-lifted", func(b *testing.B) {
		benchQuoteFlood(b, func(c *Config) { c.MaxConnections, c.MaxConnectionsPerIP = 1000, 1000 })
	})
	b.Run("defaults", func(b *testing.B) { benchQuoteFlood(b, func(*Config) {}) })
}

func benchQuoteFlood(b *testing.B, mod func(*Config)) {
	const flood = 200
	n := newTPMNode(b)
	jsAddr := startJoinService(b, n)
	rejoinCreds := atls.NewCredentials(atls.Config{Issuer: n.issuer})
	serverIssuer := attestation.NewBackgroundIssuer(n.issuer, attestation.QuoteLimits{})

	// Each iteration measures pairs alternately, so that the load of a
	// shared machine hits both sides of the ratio alike.
	const pairs = 5
	var base, flooded, stop time.Duration
	var floodQuotes, floodConns int
	for b.Loop() {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		cfg := Config{DiskUUID: testUUID, Listener: lis,
			Credentials: atls.NewCredentials(atls.Config{Issuer: serverIssuer})}
		mod(&cfg)
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- New(cfg).Serve(ctx, (&keyChecker{}).check) }()
		addr := lis.Addr().String()
		timeToKey(b, jsAddr, rejoinCreds) // warm-up: the first connection of a process costs more

		for range pairs {
			base += timeToKey(b, jsAddr, rejoinCreds)

			conns := floodTLS(b, addr, flood, 0)
			floodConns += len(conns)
			closeAll(conns)
			before := n.probe.Quotes()
			flooded += timeToKey(b, jsAddr, rejoinCreds)
			floodQuotes += n.probe.Quotes() - before - 1
		}

		var up atomic.Int32
		half := make(chan struct{})
		wave := make(chan []net.Conn, 1)
		go func() {
			wave <- floodTLSWith(b, addr, flood, func() {
				if up.Add(1) == flood/2 {
					close(half)
				}
			})
		}()
		var kept []net.Conn
		select {
		case <-half:
		case kept = <-wave: // the connection caps kept fewer than half
		}
		start := time.Now()
		cancel()
		<-served
		stop += time.Since(start)
		if kept == nil {
			kept = <-wave
		}
		closeAll(kept)
	}
	ms := func(d time.Duration, per int) float64 { return float64(d.Microseconds()) / 1000 / float64(per) }
	b.ReportMetric(float64(flooded)/float64(base), "flood/base")
	b.ReportMetric(ms(base, b.N*pairs), "base-ms")
	b.ReportMetric(ms(flooded, b.N*pairs), "flood-ms")
	b.ReportMetric(ms(stop, b.N), "stop-ms")
	b.ReportMetric(float64(floodQuotes)/float64(b.N*pairs), "flood-quotes")
	b.ReportMetric(float64(floodConns)/float64(b.N*pairs), "flood-conns")
}

// startJoinService runs a real JoinService that admits the node only with a
// valid quote from its AK.
func startJoinService(b testing.TB, n *tpmNode) string {
	b.Helper()
	js, err := joinservice.New(joinservice.Config{MasterSecret: testutil.NewMasterSecret(b), MaxConcurrent: 4})
	if err != nil {
		b.Fatal(err)
	}
	v, err := attestation.NewTPMValidator(attestation.ValidatorConfig{PinnedAKs: []crypto.PublicKey{n.ak}})
	if err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		_ = js.Serve(ctx, lis, atls.NewCredentials(atls.Config{Validator: v}))
		close(done)
	}()
	b.Cleanup(func() { cancel(); <-done; js.Close() })
	return lis.Addr().String()
}

// timeToKey runs a fresh RejoinClient until its first ticket.
func timeToKey(b testing.TB, jsAddr string, creds credentials.TransportCredentials) time.Duration {
	b.Helper()
	c := rejoinclient.New(rejoinclient.Config{DiskUUID: testUUID, Endpoints: rejoinclient.StaticEndpoints{jsAddr},
		Credentials: creds})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	var took time.Duration
	err := c.Serve(ctx, func(_ context.Context, k unlock.Key) error {
		took = time.Since(start)
		k.Zero()
		return nil
	})
	if err != nil {
		b.Fatalf("RejoinClient: %v", err)
	}
	return took
}
