package joinservice

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/rejoinclient"
	"google.golang.org/grpc/credentials"
)

// requestLog records every admission decision of a Server.
type requestLog struct {
	mu     sync.Mutex
	events []requestEvent
}

type requestEvent struct {
	at         time.Time
	diskUUID   string
	admitted   bool
	retryAfter time.Duration
}

func (l *requestLog) observe(diskUUID string, admitted bool, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, requestEvent{at: time.Now(), diskUUID: diskUUID, admitted: admitted, retryAfter: retryAfter})
}

func (l *requestLog) snapshot() []requestEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]requestEvent(nil), l.events...)
}

func nodeUUID(i int) string { return fmt.Sprintf("0a1b2c3d-0000-4000-8000-%012d", i) }

// rejoinNodes runs n real RejoinClients against addr, each with a check that
// accepts only the key derived from secret for its disk, and waits for all.
//
// backoffBase 0 keeps the RejoinClient's default backoff between failed rounds.
func rejoinNodes(ctx context.Context, n int, addr string, secret masterkey.MasterSecret, creds credentials.TransportCredentials, backoffBase time.Duration) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			uuid := nodeUUID(i)
			want, err := secret.DiskKey(uuid)
			if err != nil {
				errs[i] = err
				return
			}
			client := rejoinclient.New(rejoinclient.Config{
				DiskUUID:    uuid,
				Endpoints:   rejoinclient.StaticEndpoints{addr},
				Credentials: creds,
				BackoffBase: backoffBase,
			})
			errs[i] = client.Serve(ctx, func(_ context.Context, k unlock.Key) error {
				if !bytes.Equal(k.DiskKey, want) {
					return unlock.ErrWrongKey
				}
				return nil
			})
		})
	}
	wg.Wait()
	return errs
}

func TestRejoinClientsBackOffUnderOverload(t *testing.T) {
	secret := testutil.NewMasterSecret(t)
	// The slots are held until a third admission decision was made (which
	// must be a refusal): on a loaded machine the nodes' handshakes may
	// otherwise trickle in slower than 2 slots of 20 ms serve them, and
	// nothing would be pushed back.
	var decisions atomic.Int32
	contended := make(chan struct{})
	var contendedOnce sync.Once
	s, err := New(Config{MasterSecret: secret, MaxConcurrent: 2, Work: func(ctx context.Context) error {
		select {
		case <-contended:
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
		time.Sleep(20 * time.Millisecond)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	var log requestLog
	s.observe = func(diskUUID string, admitted bool, retryAfter time.Duration) {
		log.observe(diskUUID, admitted, retryAfter)
		if decisions.Add(1) >= 3 {
			contendedOnce.Do(func() { close(contended) })
		}
	}
	serviceCreds, nodeCreds := atlsPair(t)
	addr := startService(t, s, serviceCreds)

	const nodes = 10
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for i, err := range rejoinNodes(ctx, nodes, addr, secret, nodeCreds, 0) {
		if err != nil {
			t.Errorf("node %d: %v", i, err)
		}
	}

	events := log.snapshot()
	pushedBack := 0
	lastRefusal := map[string]requestEvent{}
	for _, e := range events {
		if prev, ok := lastRefusal[e.diskUUID]; ok {
			// The client came back no earlier than the service asked.
			if early := prev.at.Add(prev.retryAfter).Sub(e.at); early > time.Millisecond {
				t.Errorf("%s returned %v before its retry hint", e.diskUUID, early)
			}
			delete(lastRefusal, e.diskUUID)
		}
		if !e.admitted {
			pushedBack++
			lastRefusal[e.diskUUID] = e
		}
	}
	if pushedBack == 0 {
		t.Fatal("10 nodes against 2 slots of 20 ms were never pushed back; the test tests nothing")
	}
	// Reservations bring each refused client back when a slot frees: a
	// handful of requests per node, not a retry storm.
	if len(events) > 3*nodes {
		t.Errorf("%d requests for %d nodes (%d pushed back): retry storm", len(events), nodes, pushedBack)
	}
	t.Logf("%d requests, %d pushed back", len(events), pushedBack)
}
