package rejoinclient

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/unlock"
	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
)

// benchStagger lets a run try another stagger than the default
// (go test -bench TimeToKey -args -rejoin.stagger=500us).
var benchStagger = flag.Duration("rejoin.stagger", 0, "Stagger for BenchmarkTimeToKey (0: DefaultStagger)")

// BenchmarkTimeToKey measures the time from Serve's start until the ticket
// reaches check, with dead endpoints (never-answering listeners and closed
// ports, alternating) in front of or around one healthy TLS JoinService on
// loopback. Every iteration also runs the healthy-only case against the same
// server, interleaved, and the benchmark reports the ratio of the means
// (ratio) and of the medians (p50-ratio) against it; DESIGN.md §8 wants
// ≤ 1.5. The client runs with its default timing.
func BenchmarkTimeToKey(b *testing.B) {
	serverCreds, clientCreds := newTLSPair(b)
	key := newTicket(b)
	healthy := startJoinServer(b, serverCreds, ticketHandler(key)).addr

	dead := func(n int) []string {
		var eps []string
		for i := range n {
			if i%2 == 0 {
				eps = append(eps, neverAnswering(b))
			} else {
				eps = append(eps, closedPort(b))
			}
		}
		return eps
	}

	b.Run("healthy-only", func(b *testing.B) {
		benchTimeToKey(b, clientCreds, []string{healthy}, true, healthy)
	})
	for _, n := range []int{1, 2, 5} {
		eps := append(dead(n), healthy)
		b.Run(fmt.Sprintf("%ddead+1healthy/last", n), func(b *testing.B) {
			benchTimeToKey(b, clientCreds, eps, true, healthy)
		})
		b.Run(fmt.Sprintf("%ddead+1healthy/random", n), func(b *testing.B) {
			benchTimeToKey(b, clientCreds, eps, false, healthy)
		})
	}
}

func benchTimeToKey(b *testing.B, creds credentials.TransportCredentials, endpoints []string, keepOrder bool, healthy string) {
	var scenario, baseline []time.Duration
	b.ResetTimer()
	for b.Loop() {
		scenario = append(scenario, timeToKey(b, creds, endpoints, keepOrder))
		b.StopTimer()
		baseline = append(baseline, timeToKey(b, creds, []string{healthy}, true))
		b.StartTimer()
	}
	b.ReportMetric(float64(mean(scenario).Microseconds()), "µs-to-key")
	b.ReportMetric(float64(mean(baseline).Microseconds()), "µs-to-key-healthy-only")
	b.ReportMetric(float64(mean(scenario))/float64(mean(baseline)), "ratio")
	b.ReportMetric(float64(median(scenario))/float64(median(baseline)), "p50-ratio")
}

// timeToKey runs one Serve and returns how long the ticket took to reach check.
func timeToKey(b *testing.B, creds credentials.TransportCredentials, endpoints []string, keepOrder bool) time.Duration {
	c := New(Config{
		DiskUUID:    "8a4e0e2c-7b61-4c55-a3e4-0c5a2d5e7f10",
		Endpoints:   StaticEndpoints(endpoints),
		Credentials: creds,
		Log:         zap.NewNop(),
		KeepOrder:   keepOrder,
		Stagger:     *benchStagger,
	})
	var got time.Duration
	start := time.Now()
	err := c.Serve(context.Background(), func(_ context.Context, k unlock.Key) error {
		got = time.Since(start)
		if len(k.DiskKey) != 32 {
			return errors.New("bad key")
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return got
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
