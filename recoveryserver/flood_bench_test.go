package recoveryserver

import (
	"context"
	"crypto"
	"fmt"
	"net"
	"slices"
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
// The flood comes from a helper process (flooder_test.go), as the host's
// connections come from outside the guest.
//
// Reported: flood/base (median flooded ÷ median base time to key, target
// ≤ 1.5), base-ms and flood-ms (the medians), stop-ms (mean, target
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
	// shared machine hits both sides of the ratio alike, and the ratio is
	// of medians, so that one descheduled sample does not decide it.
	const pairs = 9
	var bases, floodeds []time.Duration
	var stop time.Duration
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

		f := startFlooder(b, addr)
		for range pairs {
			bases = append(bases, timeToKey(b, jsAddr, rejoinCreds))

			floodConns += f.open(b, flood)
			f.closeAll(b)
			before := n.probe.Quotes()
			floodeds = append(floodeds, timeToKey(b, jsAddr, rejoinCreds))
			floodQuotes += n.probe.Quotes() - before - 1
		}

		f.send(b, fmt.Sprintf("open %d", flood))
		got := f.await(b, "half", "up") // "up" first: the caps kept fewer than half
		start := time.Now()
		cancel()
		<-served
		stop += time.Since(start)
		if got == "half" {
			f.await(b, "up")
		}
		f.stop()
	}
	ms := func(d time.Duration, per int) float64 { return float64(d.Microseconds()) / 1000 / float64(per) }
	base, flooded := median(bases), median(floodeds)
	b.ReportMetric(float64(flooded)/float64(base), "flood/base")
	b.ReportMetric(ms(base, 1), "base-ms")
	b.ReportMetric(ms(flooded, 1), "flood-ms")
	b.ReportMetric(ms(stop, b.N), "stop-ms")
	b.ReportMetric(float64(floodQuotes)/float64(b.N*pairs), "flood-quotes")
	b.ReportMetric(float64(floodConns)/float64(b.N*pairs), "flood-conns")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
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
