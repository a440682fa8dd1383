package dmctl

import (
	"context"
	"google.golang.org/grpc/credentials"
	"testing"
	"time"
)

// BenchmarkRecoverFiveVsOne: `dmctl recover` of 5 waiting nodes against 1,
// each a real RecoveryServer on loopback with aTLS (development documents).
// Reported: ms for 1 node, ms for 5, and their ratio (target ≤ 1.5).
//
// "quote=0" runs every node's side in this process too, so 5 nodes cost 5×
// the handshake CPU on the same 2 cores: it measures this machine's CPU
// more than dmctl. "quote=20ms" gives each node's attestation the latency
// of a TPM quote (it runs on the node, not the operator's CPU), which is
// where a real push spends its time.
func BenchmarkRecoverFiveVsOne(b *testing.B) {
	b.Run("quote=0", func(b *testing.B) { benchRecover(b, nodeCredentials) })
	b.Run("quote=20ms", func(b *testing.B) {
		benchRecover(b, func() credentials.TransportCredentials { return nodeCredentialsWithQuoteLatency(20 * time.Millisecond) })
	})
}

func benchRecover(b *testing.B, nodeCreds func() credentials.TransportCredentials) {
	secret := newSecret(b)
	creds := operatorCredentials()
	run := func(n int) time.Duration {
		b.StopTimer()
		var endpoints []string
		var nodes []*testNode
		for i := range n {
			node := startNode(b, listen(b), secret, diskUUID(i), nodeCreds())
			nodes = append(nodes, node)
			endpoints = append(endpoints, node.addr)
		}
		b.StartTimer()
		start := time.Now()
		// Bounded, so a push that never completes fails the run instead of
		// retrying for ever.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := Recover(ctx, RecoverConfig{Endpoints: endpoints, MasterSecret: secret, Credentials: creds})
		elapsed := time.Since(start)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
		b.StopTimer()
		for _, node := range nodes {
			node.waitAccepted(b)
		}
		b.StartTimer()
		return elapsed
	}
	var one, five time.Duration
	for b.Loop() {
		one += run(1)
		five += run(5)
	}
	n := float64(b.N)
	b.ReportMetric(float64(one.Microseconds())/1000/n, "ms/1node")
	b.ReportMetric(float64(five.Microseconds())/1000/n, "ms/5nodes")
	b.ReportMetric(float64(five)/float64(one), "5÷1")
}
