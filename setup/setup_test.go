package setup

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/spf13/afero"
	"go.uber.org/zap/zaptest"
)

type lifecycle struct {
	mgr     *Manager
	disks   *fakeDisks
	mounter *fakeMounter
	marker  *fakeMarker
	fs      afero.Fs
	modes   []DiskMode
	cfg     Config
}

// newLifecycle builds a Manager whose sources are made by serve for each mode.
func newLifecycle(t *testing.T, disks *fakeDisks, serve func(uuid string, mode DiskMode) []KeySource) *lifecycle {
	t.Helper()
	l := &lifecycle{disks: disks, mounter: &fakeMounter{}, marker: &fakeMarker{}, fs: afero.NewMemMapFs()}
	l.cfg = DefaultConfig()
	l.cfg.StateDisk = filepath.Join(t.TempDir(), "state.img")
	if err := os.WriteFile(l.cfg.StateDisk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l.cfg.ReminderInterval = time.Hour
	factory := func(uuid string, mode DiskMode) ([]KeySource, error) {
		l.modes = append(l.modes, mode)
		return serve(uuid, mode), nil
	}
	l.mgr = New(l.cfg, zaptest.NewLogger(t), disks, l.mounter, l.fs, l.marker, factory)
	return l
}

func testSecret(t *testing.T) masterkey.MasterSecret {
	t.Helper()
	return masterkey.MasterSecret{Key: bytes.Repeat([]byte{7}, 32), Salt: bytes.Repeat([]byte{8}, 32)}
}

// ticketFor derives what a JoinService would hand out for uuid.
func ticketFor(t testing.TB, m masterkey.MasterSecret, uuid string) unlock.Key {
	t.Helper()
	disk, err := m.DiskKey(uuid)
	if err != nil {
		t.Fatal(err)
	}
	secret, _ := m.MeasurementSecret()
	salt, _ := m.MeasurementSalt()
	return unlock.Key{DiskKey: disk, MeasurementSecret: secret, MeasurementSalt: salt}
}

func expectedClusterID(t *testing.T, m masterkey.MasterSecret) []byte {
	secret, _ := m.MeasurementSecret()
	salt, _ := m.MeasurementSalt()
	id, err := masterkey.ClusterID(secret, salt)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestBlankDiskIsFormattedEnrolledAndInitialized(t *testing.T) {
	ms := testSecret(t)
	disks := &fakeDisks{probe: diskencryption.Probe{Kind: diskencryption.KindBlank}}
	l := newLifecycle(t, disks, func(uuid string, mode DiskMode) []KeySource {
		return []KeySource{&scriptedSource{name: "RejoinClient", candidates: []unlock.Key{ticketFor(t, ms, uuid)}}}
	})

	sum, err := l.mgr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !sum.NewDisk || disks.formatted != 1 || l.modes[0] != ModeBlank {
		t.Fatalf("summary %+v, formatted %d, modes %v", sum, disks.formatted, l.modes)
	}
	want := []diskencryption.State{diskencryption.StateFormatting, diskencryption.StateKeyed, diskencryption.StateInitialized}
	if !equalStates(disks.disk.states, want) {
		t.Fatalf("token states %v, want %v", disks.disk.states, want)
	}
	cluster := ticketFor(t, ms, disks.disk.uuid)
	if len(disks.disk.keys) != 1 || !bytes.Equal(disks.disk.keys[0], cluster.DiskKey) {
		t.Fatal("the temporary keyslot was not replaced by the cluster key")
	}
	if !bytes.Equal(disks.disk.activated, cluster.DiskKey) || l.mounter.mkfs != 1 {
		t.Fatal("disk not mapped with the cluster key or no file system created")
	}
	state, err := readNodeState(l.fs, l.mgr.nodeStatePath())
	if err != nil || !bytes.Equal(state.MeasurementSalt, cluster.MeasurementSalt) {
		t.Fatalf("node state %+v, %v", state, err)
	}
	if len(l.marker.marked) != 1 || !bytes.Equal(l.marker.marked[0], expectedClusterID(t, ms)) {
		t.Fatal("PCR 15 not marked with the cluster ID")
	}
}

func TestBlankDiskRefusesKeyWithoutSalt(t *testing.T) {
	ms := testSecret(t)
	disks := &fakeDisks{probe: diskencryption.Probe{Kind: diskencryption.KindBlank}}
	var src *scriptedSource
	l := newLifecycle(t, disks, func(uuid string, mode DiskMode) []KeySource {
		noSalt := ticketFor(t, ms, uuid)
		noSalt.MeasurementSalt = nil
		src = &scriptedSource{name: "RecoveryServer", candidates: []unlock.Key{noSalt, ticketFor(t, ms, uuid)}}
		return []KeySource{src}
	})
	if _, err := l.mgr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(src.answers[0], unlock.ErrMalformed) || src.answers[1] != nil {
		t.Fatalf("answers %v", src.answers)
	}
}

func TestExistingDiskUnlocksWithTheKeyThatOpensIt(t *testing.T) {
	ms := testSecret(t)
	uuid := "11111111-2222-4333-8444-555555555555"
	good := ticketFor(t, ms, uuid)
	disk := &fakeDisk{uuid: uuid, keys: [][]byte{good.DiskKey}, states: []diskencryption.State{diskencryption.StateInitialized}}
	disks := &fakeDisks{probe: diskencryption.Probe{Kind: diskencryption.KindLUKS2, UUID: uuid, State: diskencryption.StateInitialized}, disk: disk}
	wrong := ticketFor(t, testSecretOther(), uuid)
	var recovery *scriptedSource
	l := newLifecycle(t, disks, func(string, DiskMode) []KeySource {
		recovery = &scriptedSource{name: "RecoveryServer", candidates: []unlock.Key{wrong, good}}
		return []KeySource{recovery, &scriptedSource{name: "RejoinClient"}}
	})
	salt, _ := ms.MeasurementSalt()
	if err := writeNodeState(l.fs, l.mgr.nodeStatePath(), NodeState{MeasurementSalt: salt}); err != nil {
		t.Fatal(err)
	}

	sum, err := l.mgr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sum.NewDisk || disks.formatted != 0 || l.modes[0] != ModeExisting || sum.Race.Source != "RecoveryServer" {
		t.Fatalf("summary %+v formatted %d modes %v", sum, disks.formatted, l.modes)
	}
	if !errors.Is(recovery.answers[0], unlock.ErrWrongKey) {
		t.Fatalf("wrong key answered %v", recovery.answers[0])
	}
	if !bytes.Equal(disk.activated, good.DiskKey) {
		t.Fatal("not mapped with the right key")
	}
	if len(l.mounter.mounts) != 1 || !l.mounter.mounts[0] {
		t.Fatalf("mounts %v: want one read-only mount", l.mounter.mounts)
	}
	if len(l.marker.marked) != 1 || !bytes.Equal(l.marker.marked[0], expectedClusterID(t, ms)) {
		t.Fatal("PCR 15 not marked with the cluster ID")
	}
	if len(disk.states) != 1 {
		t.Fatalf("token of an existing disk was rewritten: %v", disk.states)
	}
}

func testSecretOther() masterkey.MasterSecret {
	return masterkey.MasterSecret{Key: bytes.Repeat([]byte{3}, 32), Salt: bytes.Repeat([]byte{4}, 32)}
}

// Every disk that is neither provably blank nor an initialized or
// interrupted disk of ours is refused: never formatted, never written, with
// only the RecoveryServer up and every push refused.
func TestRefusedDisksAreNeverTouched(t *testing.T) {
	uuid := "11111111-2222-4333-8444-555555555555"
	cases := map[string]*fakeDisks{
		"foreign data":   {probe: diskencryption.Probe{Kind: diskencryption.KindForeign, Reason: "ext4 superblock"}},
		"LUKS2 not ours": {probe: diskencryption.Probe{Kind: diskencryption.KindLUKS2, UUID: uuid}, disk: &fakeDisk{uuid: uuid}},
		"header tampered": {probe: diskencryption.Probe{Kind: diskencryption.KindLUKS2, UUID: uuid, State: diskencryption.StateInitialized},
			disk: &fakeDisk{uuid: uuid, headerErr: errors.New("segment cipher cipher_null"), states: []diskencryption.State{diskencryption.StateInitialized}}},
	}
	for name, disks := range cases {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			var answers []error
			l := newLifecycle(t, disks, func(string, DiskMode) []KeySource {
				return []KeySource{sourceFunc{name: "RecoveryServer", serve: func(c context.Context, check unlock.Check) error {
					answers = append(answers, check(c, cloneKey(rightKey)))
					cancel() // the operator gave up; the node shuts down
					<-c.Done()
					return c.Err()
				}}}
			})
			_, err := l.mgr.Run(ctx)
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("err = %v, want ErrRefused", err)
			}
			if len(l.modes) != 1 || l.modes[0] != ModeRefused {
				t.Fatalf("modes %v", l.modes)
			}
			if len(answers) != 1 || !errors.Is(answers[0], unlock.ErrRefusedDisk) {
				t.Fatalf("push answered %v", answers)
			}
			if disks.formatted != 0 || (disks.disk != nil && (len(disks.disk.states) > 1 || disks.disk.activated != nil)) {
				t.Fatal("a refused disk was written or mapped")
			}
		})
	}
}

func TestInterruptedFormatIsRedone(t *testing.T) {
	for _, state := range []diskencryption.State{diskencryption.StateFormatting, diskencryption.StateKeyed} {
		t.Run(string(state), func(t *testing.T) {
			ms := testSecret(t)
			disks := &fakeDisks{probe: diskencryption.Probe{Kind: diskencryption.KindLUKS2, UUID: "old", State: state}}
			l := newLifecycle(t, disks, func(uuid string, mode DiskMode) []KeySource {
				return []KeySource{&scriptedSource{name: "RejoinClient", candidates: []unlock.Key{ticketFor(t, ms, uuid)}}}
			})
			sum, err := l.mgr.Run(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !sum.NewDisk || disks.formatted != 1 {
				t.Fatalf("not reformatted: %+v", sum)
			}
		})
	}
}

func TestMissingDiskIsAwaitedWithTheRecoveryListenerUp(t *testing.T) {
	ms := testSecret(t)
	disks := &fakeDisks{probe: diskencryption.Probe{Kind: diskencryption.KindBlank}}
	refusedPush := make(chan error, 1)
	l := newLifecycle(t, disks, func(uuid string, mode DiskMode) []KeySource {
		if mode == ModeRefused {
			return []KeySource{sourceFunc{name: "RecoveryServer", serve: func(ctx context.Context, check unlock.Check) error {
				refusedPush <- check(ctx, cloneKey(rightKey))
				<-ctx.Done()
				return ctx.Err()
			}}}
		}
		return []KeySource{&scriptedSource{name: "RejoinClient", candidates: []unlock.Key{ticketFor(t, ms, uuid)}}}
	})
	if err := os.Remove(l.cfg.StateDisk); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := l.mgr.Run(context.Background()); done <- err }()
	if err := <-refusedPush; !errors.Is(err, unlock.ErrRefusedDisk) {
		t.Fatalf("push without a disk answered %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned without a disk: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := os.WriteFile(l.cfg.StateDisk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(l.modes) != 2 || l.modes[0] != ModeRefused || l.modes[1] != ModeBlank || disks.formatted != 1 {
		t.Fatalf("modes %v formatted %d", l.modes, disks.formatted)
	}
}

func equalStates(a, b []diskencryption.State) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The key reaches a file only when the image asks for it.
func TestKeyHandoverOnlyWhenConfigured(t *testing.T) {
	for _, handover := range []string{"", "/run/disk-mapper/state.key"} {
		ms := testSecret(t)
		disks := &fakeDisks{probe: diskencryption.Probe{Kind: diskencryption.KindBlank}}
		l := newLifecycle(t, disks, func(uuid string, mode DiskMode) []KeySource {
			return []KeySource{&scriptedSource{name: "RejoinClient", candidates: []unlock.Key{ticketFor(t, ms, uuid)}}}
		})
		l.mgr.cfg.KeyHandoverFile = handover
		if _, err := l.mgr.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		var files []string
		afero.Walk(l.fs, "/", func(path string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				files = append(files, path)
			}
			return nil
		})
		want := []string{l.mgr.nodeStatePath()}
		if handover != "" {
			want = append(want, handover)
			got, _ := afero.ReadFile(l.fs, handover)
			if !bytes.Equal(got, ticketFor(t, ms, disks.disk.uuid).DiskKey) {
				t.Fatal("handover file does not hold the disk key")
			}
		}
		if len(files) != len(want) {
			t.Fatalf("handover %q: files %v, want %v", handover, files, want)
		}
	}
}

// A node that cannot authenticate a key for a new disk never formats one.
func TestBlankDiskRefusedWhenNewDisksAreNotAllowed(t *testing.T) {
	disks := &fakeDisks{probe: diskencryption.Probe{Kind: diskencryption.KindBlank}}
	ctx, cancel := context.WithCancel(context.Background())
	var answer error
	l := newLifecycle(t, disks, func(string, DiskMode) []KeySource {
		return []KeySource{sourceFunc{name: "RecoveryServer", serve: func(c context.Context, check unlock.Check) error {
			answer = check(c, cloneKey(rightKey))
			cancel()
			<-c.Done()
			return c.Err()
		}}}
	})
	l.mgr.cfg.BlankDiskRefusal = "no --join-ca"
	if _, err := l.mgr.Run(ctx); !errors.Is(err, ErrRefused) {
		t.Fatalf("err = %v, want ErrRefused", err)
	}
	if disks.formatted != 0 || len(l.modes) != 1 || l.modes[0] != ModeRefused || !errors.Is(answer, unlock.ErrRefusedDisk) {
		t.Fatalf("formatted %d, modes %v, push answered %v", disks.formatted, l.modes, answer)
	}
}
