package setup

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/unlock"
)

// announcingSource logs its "Starting" line after a delay, then says it is
// ready (like the RecoveryServer and the RejoinClient), and serves until ctx
// ends.
type announcingSource struct {
	name  string
	log   *zap.Logger
	delay time.Duration
	ready chan struct{}
}

func (s *announcingSource) Name() string           { return s.name }
func (s *announcingSource) Ready() <-chan struct{} { return s.ready }
func (s *announcingSource) Serve(ctx context.Context, _ unlock.Check) error {
	time.Sleep(s.delay)
	s.log.Info("Starting " + s.name)
	close(s.ready)
	<-ctx.Done()
	return ctx.Err()
}

// "Waiting for decryption key" comes after every source's "Starting" line,
// however late a source announces itself, and a node that waits for an
// operator (here: a blank disk it may not enrol without a CA) prints it too,
// with waitingFor and the reason, so the seed's grep finds it.
func TestWaitingLineAfterTheSourcesAndOnEveryOperatorWait(t *testing.T) {
	for _, tc := range []struct {
		name       string
		probe      diskencryption.Probe
		refusal    string
		waitingFor string
	}{
		{"existing disk", diskencryption.Probe{Kind: diskencryption.KindLUKS2, State: diskencryption.StateInitialized, UUID: "u"}, "", "key"},
		{"blank disk without a CA", diskencryption.Probe{Kind: diskencryption.KindBlank}, "no --join-ca", "operator"},
		{"foreign disk", diskencryption.Probe{Kind: diskencryption.KindForeign, Reason: "ext4 superblock"}, "", "operator"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			log := zap.New(core)
			disks := &fakeDisks{probe: tc.probe}
			if tc.probe.Kind == diskencryption.KindLUKS2 {
				disks.disk = &fakeDisk{uuid: tc.probe.UUID, states: []diskencryption.State{diskencryption.StateInitialized}}
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			l := newLifecycle(t, disks, func(string, DiskMode) []KeySource {
				return []KeySource{
					&announcingSource{name: "RecoveryServer", log: log, delay: 30 * time.Millisecond, ready: make(chan struct{})},
					&announcingSource{name: "RejoinClient", log: log, delay: 60 * time.Millisecond, ready: make(chan struct{})},
				}
			})
			l.mgr.log = log
			l.mgr.cfg.BlankDiskRefusal = tc.refusal
			done := make(chan error, 1)
			go func() { _, err := l.mgr.Run(ctx); done <- err }()
			deadline := time.Now().Add(5 * time.Second)
			for logs.FilterMessage("Waiting for decryption key").Len() == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrRefused) {
				t.Fatal(err)
			}
			var order []string
			var waiting map[string]any
			for _, e := range logs.All() {
				switch e.Message {
				case "Starting RecoveryServer", "Starting RejoinClient":
					order = append(order, e.Message)
				case "Waiting for decryption key":
					if waiting == nil {
						order = append(order, e.Message)
						waiting = e.ContextMap()
					}
				}
			}
			if strings.Join(order, ",") != "Starting RecoveryServer,Starting RejoinClient,Waiting for decryption key" {
				t.Fatalf("order %v", order)
			}
			if waiting["waitingFor"] != tc.waitingFor || (tc.waitingFor == "operator") != (waiting["reason"] != nil) {
				t.Fatalf("waiting line %v, want waitingFor %s (and a reason when an operator is needed)", waiting, tc.waitingFor)
			}
		})
	}
}
