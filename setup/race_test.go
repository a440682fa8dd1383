package setup

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/unlock"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// scriptedSource delivers its candidates one after another, then blocks like
// an in-flight RPC until its context ends. It records what check answered.
type scriptedSource struct {
	name       string
	candidates []unlock.Key
	gap        time.Duration
	failWith   error // returned at once instead of serving (a listener error)
	answers    []error
	sawCancel  atomic.Bool
}

func (s *scriptedSource) Name() string { return s.name }

func (s *scriptedSource) Serve(ctx context.Context, check unlock.Check) error {
	if s.failWith != nil {
		return s.failWith
	}
	for _, c := range s.candidates {
		select {
		case <-ctx.Done():
			s.sawCancel.Store(true)
			return ctx.Err()
		case <-time.After(s.gap):
		}
		key := cloneKey(c)
		err := check(ctx, key)
		key.Zero() // a source zeroes its copy; the winner must have been copied
		s.answers = append(s.answers, err)
		if err == nil || errors.Is(err, unlock.ErrDecided) {
			return err
		}
	}
	<-ctx.Done() // an RPC in flight, cancelled by the winner
	s.sawCancel.Store(true)
	return ctx.Err()
}

var (
	rightKey = unlock.Key{DiskKey: bytes.Repeat([]byte{1}, 32), MeasurementSecret: bytes.Repeat([]byte{2}, 32)}
	wrongKey = unlock.Key{DiskKey: bytes.Repeat([]byte{9}, 32), MeasurementSecret: bytes.Repeat([]byte{2}, 32)}
)

func opensWithRightKey(k unlock.Key) error {
	if !bytes.Equal(k.DiskKey, rightKey.DiskKey) {
		return unlock.ErrWrongKey
	}
	return nil
}

func TestRaceWrongKeyGoesBackToItsSourceWhichContinues(t *testing.T) {
	recovery := &scriptedSource{name: "RecoveryServer", candidates: []unlock.Key{wrongKey, rightKey}, gap: time.Millisecond}
	rejoin := &scriptedSource{name: "RejoinClient"}

	res, err := Race(context.Background(), zaptest.NewLogger(t), opensWithRightKey, recovery, rejoin)
	if err != nil {
		t.Fatal(err)
	}
	if res.Source != "RecoveryServer" || !bytes.Equal(res.Key.DiskKey, rightKey.DiskKey) {
		t.Fatalf("winner %s with key %x", res.Source, res.Key.DiskKey)
	}
	if len(recovery.answers) != 2 || !errors.Is(recovery.answers[0], unlock.ErrWrongKey) || recovery.answers[1] != nil {
		t.Fatalf("recovery answers = %v, want [wrong key, nil]", recovery.answers)
	}
	if !rejoin.sawCancel.Load() {
		t.Fatal("the losing source's in-flight work was not cancelled")
	}
}

func TestRaceOnlyOneKeyWins(t *testing.T) {
	for range 50 {
		a := &scriptedSource{name: "a", candidates: []unlock.Key{rightKey}}
		b := &scriptedSource{name: "b", candidates: []unlock.Key{rightKey}}
		res, err := Race(context.Background(), zaptest.NewLogger(t), opensWithRightKey, a, b)
		if err != nil {
			t.Fatal(err)
		}
		winners := 0
		for _, s := range []*scriptedSource{a, b} {
			if len(s.answers) == 1 && s.answers[0] == nil {
				winners++
				if s.name != res.Source {
					t.Fatalf("result names %s, but %s won", res.Source, s.name)
				}
			}
		}
		if winners != 1 {
			t.Fatalf("%d winners", winners)
		}
	}
}

func TestRaceSourceFailureDoesNotStopTheOther(t *testing.T) {
	broken := &scriptedSource{name: "RecoveryServer", failWith: errors.New("listen tcp :9999: address already in use")}
	rejoin := &scriptedSource{name: "RejoinClient", candidates: []unlock.Key{rightKey}, gap: 10 * time.Millisecond}
	res, err := Race(context.Background(), zaptest.NewLogger(t), opensWithRightKey, broken, rejoin)
	if err != nil {
		t.Fatal(err)
	}
	if res.Source != "RejoinClient" {
		t.Fatalf("winner %s", res.Source)
	}
}

func TestRaceAllSourcesFail(t *testing.T) {
	a := &scriptedSource{name: "a", failWith: errors.New("boom")}
	b := &scriptedSource{name: "b", failWith: errors.New("bang")}
	if _, err := Race(context.Background(), zaptest.NewLogger(t), opensWithRightKey, a, b); !errors.Is(err, ErrNoSource) {
		t.Fatalf("err = %v, want ErrNoSource", err)
	}
}

func TestRaceContextCancelledStopsEverySource(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	a := &scriptedSource{name: "a", candidates: []unlock.Key{wrongKey}}
	b := &scriptedSource{name: "b"}
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	_, err := Race(ctx, zaptest.NewLogger(t), opensWithRightKey, a, b)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if !a.sawCancel.Load() || !b.sawCancel.Load() {
		t.Fatal("a source did not see the cancellation")
	}
}

func TestRaceLateCandidateGetsDecided(t *testing.T) {
	// The slow source's check runs after the win: it must be told so and not
	// be able to win a second time.
	fast := &scriptedSource{name: "fast", candidates: []unlock.Key{rightKey}}
	var lateAnswer atomic.Value
	late := sourceFunc{name: "late", serve: func(ctx context.Context, check unlock.Check) error {
		<-ctx.Done()
		lateAnswer.Store(check(context.Background(), cloneKey(rightKey)))
		return ctx.Err()
	}}
	if _, err := Race(context.Background(), zaptest.NewLogger(t), opensWithRightKey, fast, late); err != nil {
		t.Fatal(err)
	}
	if got, _ := lateAnswer.Load().(error); !errors.Is(got, unlock.ErrDecided) {
		t.Fatalf("late check = %v, want ErrDecided", got)
	}
}

type sourceFunc struct {
	name  string
	serve func(context.Context, unlock.Check) error
}

func (s sourceFunc) Name() string                                        { return s.name }
func (s sourceFunc) Serve(ctx context.Context, check unlock.Check) error { return s.serve(ctx, check) }
