package setup

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/joinproto"
	"github.com/diskmapper/disk-mapper/recoverproto"
	"github.com/diskmapper/disk-mapper/recoveryserver"
	"github.com/diskmapper/disk-mapper/rejoinclient"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// The race against its real parts: a LUKS2 header in a file checked by
// libcryptsetup, a RecoveryServer and a RejoinClient over gRPC on loopback.

type realDisk struct {
	dev    *diskencryption.Device
	secret masterkey.MasterSecret
	ticket unlock.Key
}

func newRealDisk(tb testing.TB) *realDisk {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "state.img")
	if err := os.WriteFile(path, make([]byte, 64<<20), 0o600); err != nil {
		tb.Fatal(err)
	}
	secret := masterkey.MasterSecret{Key: bytes.Repeat([]byte{5}, 32), Salt: bytes.Repeat([]byte{6}, 32)}
	temp := bytes.Repeat([]byte{1}, 32)
	dev, err := diskencryption.Format(path, diskencryption.FormatOptions{}, temp)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dev.Close() })
	d := &realDisk{dev: dev, secret: secret}
	d.ticket = ticketFor(tb, secret, dev.UUID())
	if err := dev.EnrollKey(temp, d.ticket.DiskKey); err != nil {
		tb.Fatal(err)
	}
	return d
}

func (d *realDisk) test(k unlock.Key) error { return d.dev.CheckKey(k.DiskKey) }

// joinServer hands out ticket, or blocks until the RPC is cancelled when
// ticket is nil (a JoinService that never answers).
type joinServer struct {
	joinproto.UnimplementedAPIServer
	ticket    *unlock.Key
	cancelled chan struct{}
}

func (s *joinServer) IssueRejoinTicket(ctx context.Context, _ *joinproto.IssueRejoinTicketRequest) (*joinproto.IssueRejoinTicketResponse, error) {
	if s.ticket == nil {
		<-ctx.Done()
		close(s.cancelled)
		return nil, ctx.Err()
	}
	return &joinproto.IssueRejoinTicketResponse{StateDiskKey: s.ticket.DiskKey, MeasurementSecret: s.ticket.MeasurementSecret}, nil
}

func startJoinServer(tb testing.TB, ticket *unlock.Key) (string, *joinServer) {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	js := &joinServer{ticket: ticket, cancelled: make(chan struct{})}
	srv := grpc.NewServer()
	joinproto.RegisterAPIServer(srv, js)
	go srv.Serve(lis)
	tb.Cleanup(srv.Stop)
	return lis.Addr().String(), js
}

func realSources(tb testing.TB, log *zap.Logger, uuid, joinAddr string) (*recoveryserver.Server, *rejoinclient.Client, string) {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	rec := recoveryserver.New(recoveryserver.Config{DiskUUID: uuid, Listener: lis, Credentials: insecure.NewCredentials(), Log: log.Named("recoveryServer")})
	rej := rejoinclient.New(rejoinclient.Config{DiskUUID: uuid, Endpoints: rejoinclient.StaticEndpoints{joinAddr},
		Credentials: insecure.NewCredentials(), Log: log.Named("rejoinClient"), AttemptTimeout: time.Hour})
	return rec, rej, lis.Addr().String()
}

// push runs the Recover stream like dmctl does and returns the final status.
func push(ctx context.Context, addr string, key unlock.Key) error {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := recoverproto.NewAPIClient(conn).Recover(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&recoverproto.RecoverMessage{Request: &recoverproto.RecoverMessage_MeasurementSecret{MeasurementSecret: key.MeasurementSecret}}); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&recoverproto.RecoverMessage{Request: &recoverproto.RecoverMessage_StateDiskKey{StateDiskKey: key.DiskKey}}); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, context.Canceled) {
				return err
			}
			if status.Code(err) == codes.OK || err.Error() == "EOF" {
				return nil
			}
			return err
		}
	}
}

// An operator's wrong key is refused, the right one wins, and the
// RejoinClient's in-flight RPC to a JoinService that never answers is
// cancelled.
func TestRaceRealRecoveryWinsAndCancelsRejoinInFlight(t *testing.T) {
	disk := newRealDisk(t)
	log := zaptest.NewLogger(t)
	joinAddr, js := startJoinServer(t, nil)
	rec, rej, recAddr := realSources(t, log, disk.dev.UUID(), joinAddr)

	type outcome struct {
		res RaceResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := Race(context.Background(), log, disk.test, rec, rej)
		done <- outcome{res, err}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wrong := ticketFor(t, testSecretOther(), disk.dev.UUID())
	var err error
	for { // the server may not be accepting yet
		if err = push(ctx, recAddr, wrong); status.Code(err) != codes.Unavailable {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("wrong key: %v, want PermissionDenied", err)
	}
	if err := push(ctx, recAddr, disk.ticket); err != nil {
		t.Fatalf("right key: %v", err)
	}
	out := <-done
	if out.err != nil || out.res.Source != rec.Name() || !bytes.Equal(out.res.Key.DiskKey, disk.ticket.DiskKey) {
		t.Fatalf("race: %+v %v", out.res, out.err)
	}
	select {
	case <-js.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the RejoinClient's in-flight RPC was not cancelled")
	}
	if err := push(ctx, recAddr, disk.ticket); status.Code(err) != codes.Unavailable {
		t.Fatalf("push after the race: %v, want Unavailable (server stopped)", err)
	}
}

// The JoinService's key wins and the RecoveryServer stops listening.
func TestRaceRealRejoinWinsAndStopsRecoveryServer(t *testing.T) {
	disk := newRealDisk(t)
	log := zaptest.NewLogger(t)
	joinAddr, _ := startJoinServer(t, &disk.ticket)
	rec, rej, recAddr := realSources(t, log, disk.dev.UUID(), joinAddr)

	res, err := Race(context.Background(), log, disk.test, rec, rej)
	if err != nil || res.Source != rej.Name() {
		t.Fatalf("race: %+v %v", res, err)
	}
	if c, err := net.DialTimeout("tcp", recAddr, time.Second); err == nil {
		c.Close()
		t.Fatal("RecoveryServer still listening after the race")
	}
}

// BenchmarkRaceStop measures DESIGN.md §8's "key accepted → other source
// stopped" (target ≤ 100 ms) with the real sources: the time from the
// winning check to the moment every Serve has returned.
func BenchmarkRaceStop(b *testing.B) {
	disk := newRealDisk(b)
	log := zap.NewNop()
	for _, winner := range []string{"rejoin-wins", "recovery-wins"} {
		b.Run(winner, func(b *testing.B) {
			var worst, total time.Duration
			for range b.N {
				var ticket *unlock.Key
				if winner == "rejoin-wins" {
					ticket = &disk.ticket
				}
				joinAddr, _ := startJoinServer(b, ticket)
				rec, rej, recAddr := realSources(b, log, disk.dev.UUID(), joinAddr)
				pushed := make(chan struct{})
				if winner == "recovery-wins" {
					go func() {
						defer close(pushed)
						for push(context.Background(), recAddr, disk.ticket) != nil {
							time.Sleep(time.Millisecond)
						}
					}()
				} else {
					close(pushed)
				}
				res, err := Race(context.Background(), log, disk.test, rec, rej)
				<-pushed
				if err != nil {
					b.Fatal(err)
				}
				total += res.Stopped
				worst = max(worst, res.Stopped)
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms-to-stop/op")
			b.ReportMetric(float64(worst.Microseconds())/1000, "ms-to-stop-max")
		})
	}
}
