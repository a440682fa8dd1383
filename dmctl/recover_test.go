package dmctl

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func recoverAll(t *testing.T, ctx context.Context, cfg RecoverConfig) []Result {
	t.Helper()
	if cfg.Credentials == nil {
		cfg.Credentials = operatorCredentials()
	}
	if cfg.BackoffBase == 0 {
		cfg.BackoffBase = 20 * time.Millisecond
	}
	res, err := Recover(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(cfg.Endpoints) {
		t.Fatalf("got %d results for %d endpoints", len(res), len(cfg.Endpoints))
	}
	return res
}

func TestRecoverOneNode(t *testing.T) {
	secret := testutil.NewMasterSecret(t)
	node := startNode(t, listen(t), secret, diskUUID(1), nodeCredentials())

	res := recoverAll(t, t.Context(), RecoverConfig{Endpoints: []string{node.addr}, MasterSecret: secret})

	if res[0].Err != nil {
		t.Fatalf("recover: %v", res[0].Err)
	}
	if res[0].DiskUUID != node.uuid {
		t.Errorf("DiskUUID = %q, want %q", res[0].DiskUUID, node.uuid)
	}
	got := node.waitAccepted(t)
	wantKey, _ := secret.DiskKey(node.uuid)
	wantMS, _ := secret.MeasurementSecret()
	wantSalt, _ := secret.MeasurementSalt()
	if !bytes.Equal(got.DiskKey, wantKey) || !bytes.Equal(got.MeasurementSecret, wantMS) || !bytes.Equal(got.MeasurementSalt, wantSalt) {
		t.Error("the node received keys other than the ones derived from the master secret")
	}
}

func TestRecoverThreeNodesAtOnce(t *testing.T) {
	secret := testutil.NewMasterSecret(t)
	var nodes []*testNode
	var endpoints []string
	for i := range 3 {
		n := startNode(t, listen(t), secret, diskUUID(i), nodeCredentials())
		nodes = append(nodes, n)
		endpoints = append(endpoints, n.addr)
	}

	var mu sync.Mutex
	pushed := map[string]bool{}
	res := recoverAll(t, t.Context(), RecoverConfig{Endpoints: endpoints, MasterSecret: secret, Progress: func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Stage == StagePushed {
			pushed[p.Endpoint] = true
		}
	}})

	for i, r := range res {
		if r.Err != nil {
			t.Errorf("node %d: %v", i, r.Err)
		}
		if r.Endpoint != endpoints[i] || r.DiskUUID != nodes[i].uuid {
			t.Errorf("result %d = %s/%s, want %s/%s", i, r.Endpoint, r.DiskUUID, endpoints[i], nodes[i].uuid)
		}
		if !pushed[endpoints[i]] {
			t.Errorf("no pushed progress for %s", endpoints[i])
		}
		nodes[i].waitAccepted(t)
	}
}

func TestWrongMasterSecretIsRefusedNotRetried(t *testing.T) {
	secret := testutil.NewMasterSecret(t)
	node := startNode(t, listen(t), secret, diskUUID(7), nodeCredentials())

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	res := recoverAll(t, ctx, RecoverConfig{Endpoints: []string{node.addr}, MasterSecret: testutil.NewMasterSecret(t)})

	if !errors.Is(res[0].Err, ErrKeyRefused) {
		t.Fatalf("err = %v, want ErrKeyRefused", res[0].Err)
	}
	if res[0].Attempts != 1 {
		t.Errorf("attempts = %d, want 1 (a refused key is not retried)", res[0].Attempts)
	}
	if ctx.Err() != nil {
		t.Error("Recover ran until the timeout instead of giving up on the refusal")
	}
	// The node keeps serving: the right secret still gets through.
	res = recoverAll(t, t.Context(), RecoverConfig{Endpoints: []string{node.addr}, MasterSecret: secret})
	if res[0].Err != nil {
		t.Fatalf("right secret after a wrong one: %v", res[0].Err)
	}
	node.waitAccepted(t)
}

func TestNodeNotUpYetIsRetriedUntilItIs(t *testing.T) {
	secret := testutil.NewMasterSecret(t)
	addr := freeAddr(t) // closed loopback port until the node comes up
	retries := make(chan struct{}, 100)
	var res []Result
	done := make(chan struct{})
	go func() {
		defer close(done)
		res = recoverAll(t, t.Context(), RecoverConfig{Endpoints: []string{addr}, MasterSecret: secret, Progress: func(p Progress) {
			if p.Stage == StageRetrying {
				retries <- struct{}{}
			}
		}})
	}()
	for range 2 {
		select {
		case <-retries:
		case <-time.After(10 * time.Second):
			t.Fatal("no retry while the node is down")
		}
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	node := startNode(t, lis, secret, diskUUID(3), nodeCredentials())
	<-done
	if res[0].Err != nil {
		t.Fatalf("recover: %v", res[0].Err)
	}
	if res[0].Attempts < 3 {
		t.Errorf("attempts = %d, want at least 3 (two failed while the node was down)", res[0].Attempts)
	}
	node.waitAccepted(t)
}

func TestTimeoutGivesUpOnNodeThatNeverComesUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	res := recoverAll(t, ctx, RecoverConfig{Endpoints: []string{freeAddr(t)}, MasterSecret: testutil.NewMasterSecret(t)})
	if res[0].Err == nil {
		t.Fatal("recover of a closed port succeeded")
	}
	if res[0].Attempts < 2 {
		t.Errorf("attempts = %d, want retries before the timeout", res[0].Attempts)
	}
}

func TestNodeWithoutAttestationIsRefusedNotRetried(t *testing.T) {
	secret := testutil.NewMasterSecret(t)
	// The node offers TLS but no attestation document.
	node := startNode(t, listen(t), secret, diskUUID(4), atls.NewCredentials(atls.Config{}))

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	res := recoverAll(t, ctx, RecoverConfig{Endpoints: []string{node.addr}, MasterSecret: secret})
	if !errors.Is(res[0].Err, ErrHandshake) {
		t.Fatalf("err = %v, want ErrHandshake", res[0].Err)
	}
	if res[0].Attempts != 1 {
		t.Errorf("attempts = %d, want 1", res[0].Attempts)
	}
}

func TestNormalizeEndpoints(t *testing.T) {
	got, err := NormalizeEndpoints([]string{"10.0.0.5", "10.0.0.5:9999", "10.0.0.6:1234", "fd00::5", "[fd00::6]", "[fd00::7]:1", "node-a"}, 9999)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.5:9999", "10.0.0.6:1234", "[fd00::5]:9999", "[fd00::6]:9999", "[fd00::7]:1", "node-a:9999"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("got[%d] = %q, want %q", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"", "10.0.0.5:0", "10.0.0.5:99999", ":9999", "a:b:c"} {
		if _, err := NormalizeEndpoints([]string{bad}, 9999); err == nil {
			t.Errorf("NormalizeEndpoints(%q) accepted", bad)
		}
	}
}
