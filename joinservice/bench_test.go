package joinservice

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/testutil"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// BenchmarkRejoinStorm: 1,000 nodes reboot at once and ask a JoinService
// with `capacity` slots, each request costing `service` inside the limit.
// The nodes are real RejoinClients (their retry-hint logic and connection
// reuse) over real gRPC on loopback. Reported:
//   - total/ideal: wall time until the last node has its key ÷
//     (N ÷ capacity × service); ideal 1.0, target ≤ 1.3;
//   - span/ideal: the same for the service's busy span (first admission to
//     last admission + one service time), i.e. how well the retry hints keep
//     the slots busy, without the time the 1,000 simulated nodes need to
//     open their connections on this machine's 2 cores;
//   - first-req-ms: when the first request reached the service;
//   - peak-req/100ms (all requests) and peak-retry/100ms (requests from
//     nodes already pushed back once), and req/node: no retry storm means
//     about 2 requests per node and retries at about the service's rate
//     (capacity ÷ service per second);
//
// "insecure" isolates admission and retry scheduling. A real ticket costs a
// key derivation plus the aTLS validation of a TPM quote, 10–20 ms, so the
// 20 ms and 10 ms cases are the realistic ones; with 2 ms and 10 slots the
// service could take 5,000 requests/s, more than 2 cores can push through
// gRPC while also running 1,000 clients, so that case measures this
// machine's CPU. "atls" runs the storm over real aTLS with development
// documents (both sides' handshakes on the same 2 cores).
func BenchmarkRejoinStorm(b *testing.B) {
	plain := func(testing.TB) (credentials.TransportCredentials, credentials.TransportCredentials) {
		return insecure.NewCredentials(), insecure.NewCredentials()
	}
	for _, service := range []time.Duration{20 * time.Millisecond, 10 * time.Millisecond, 2 * time.Millisecond} {
		b.Run(fmt.Sprintf("insecure/N=1000/cap=10/service=%v", service), func(b *testing.B) {
			benchStorm(b, 1000, 10, service, plain, true)
		})
	}
	b.Run("atls/N=1000/cap=10/service=20ms", func(b *testing.B) {
		benchStorm(b, 1000, 10, 20*time.Millisecond, atlsPair, false)
	})
}

func benchStorm(b *testing.B, nodes, capacity int, service time.Duration,
	pair func(testing.TB) (credentials.TransportCredentials, credentials.TransportCredentials), allowUnattested bool,
) {
	secret := testutil.NewMasterSecret(b)
	ideal := time.Duration(nodes/capacity) * service
	var ratioSum, spanSum, firstSum, peakSum, retryPeakSum, perNodeSum float64
	for b.Loop() {
		s, err := New(Config{MasterSecret: secret, MaxConcurrent: capacity, AllowUnattestedPeers: allowUnattested,
			Work: func(context.Context) error { time.Sleep(service); return nil }})
		if err != nil {
			b.Fatal(err)
		}
		var log requestLog
		s.observe = log.observe
		serviceCreds, nodeCreds := pair(b)
		addr := startService(b, s, serviceCreds)

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		start := time.Now()
		errs := rejoinNodes(ctx, nodes, addr, secret, nodeCreds, 0)
		total := time.Since(start)
		cancel()
		for i, err := range errs {
			if err != nil {
				b.Fatalf("node %d: %v", i, err)
			}
		}
		events := log.snapshot()
		first, last := admissionSpan(events)
		ratioSum += float64(total) / float64(ideal)
		spanSum += float64(last.Add(service).Sub(first)) / float64(ideal)
		firstSum += float64(events[0].at.Sub(start).Milliseconds())
		peakSum += float64(peakPerWindow(events, start, 100*time.Millisecond))
		retryPeakSum += float64(peakPerWindow(retries(events), start, 100*time.Millisecond))
		perNodeSum += float64(len(events)) / float64(nodes)
	}
	n := float64(b.N)
	b.ReportMetric(ratioSum/n, "total/ideal")
	b.ReportMetric(spanSum/n, "span/ideal")
	b.ReportMetric(firstSum/n, "first-req-ms")
	b.ReportMetric(peakSum/n, "peak-req/100ms")
	b.ReportMetric(retryPeakSum/n, "peak-retry/100ms")
	b.ReportMetric(perNodeSum/n, "req/node")
	b.ReportMetric(float64(ideal.Milliseconds()), "ideal-ms")
}

// admissionSpan returns the first and the last admission.
func admissionSpan(events []requestEvent) (first, last time.Time) {
	for _, e := range events {
		if !e.admitted {
			continue
		}
		if first.IsZero() || e.at.Before(first) {
			first = e.at
		}
		if e.at.After(last) {
			last = e.at
		}
	}
	return first, last
}

// retries are the requests of nodes that had already asked once.
func retries(events []requestEvent) []requestEvent {
	seen := map[string]bool{}
	var out []requestEvent
	for _, e := range events {
		if seen[e.diskUUID] {
			out = append(out, e)
		}
		seen[e.diskUUID] = true
	}
	return out
}

// peakPerWindow is the largest number of requests in one window, windows
// counted from start.
func peakPerWindow(events []requestEvent, start time.Time, window time.Duration) int {
	counts := map[int64]int{}
	peak := 0
	for _, e := range events {
		w := int64(e.at.Sub(start) / window)
		counts[w]++
		peak = max(peak, counts[w])
	}
	return peak
}
