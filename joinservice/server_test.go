package joinservice

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/joinproto"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestIssuesTicketDerivedFromMasterSecret(t *testing.T) {
	secret := testutil.NewMasterSecret(t)
	s, err := New(Config{MasterSecret: secret, MaxConcurrent: 2})
	if err != nil {
		t.Fatal(err)
	}
	serviceCreds, nodeCreds := atlsPair(t)
	addr := startService(t, s, serviceCreds)
	client := joinproto.NewAPIClient(dial(t, addr, nodeCreds))

	// Upper case is accepted and means the same disk.
	resp, err := client.IssueRejoinTicket(t.Context(), &joinproto.IssueRejoinTicketRequest{DiskUuid: "0A1B2C3D-0000-4000-8000-000000000001"})
	if err != nil {
		t.Fatal(err)
	}
	wantKey, _ := secret.DiskKey(testUUID)
	wantMS, _ := secret.MeasurementSecret()
	wantSalt, _ := secret.MeasurementSalt()
	if !bytes.Equal(resp.StateDiskKey, wantKey) || !bytes.Equal(resp.MeasurementSecret, wantMS) || !bytes.Equal(resp.MeasurementSalt, wantSalt) {
		t.Error("ticket does not carry the keys derived from the master secret")
	}
}

func TestRefusesMalformedDiskUUID(t *testing.T) {
	s, err := New(Config{MasterSecret: testutil.NewMasterSecret(t), MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	serviceCreds, nodeCreds := atlsPair(t)
	client := joinproto.NewAPIClient(dial(t, startService(t, s, serviceCreds), nodeCreds))
	for _, bad := range []string{"", "not-a-uuid", "0a1b2c3d-0000-4000-8000-00000000001", "0a1b2c3d-0000-4000-8000-000000000001\n", "../../0a1b2c3d-0000-4000-8000-000000000001"} {
		_, err := client.IssueRejoinTicket(t.Context(), &joinproto.IssueRejoinTicketRequest{DiskUuid: bad})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("uuid %q: %v, want InvalidArgument", bad, err)
		}
	}
}

func TestRefusesUnattestedPeer(t *testing.T) {
	s, err := New(Config{MasterSecret: testutil.NewMasterSecret(t), MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	// A wiring mistake: the service runs without validating credentials.
	client := joinproto.NewAPIClient(dial(t, startService(t, s, insecure.NewCredentials()), insecure.NewCredentials()))
	_, err = client.IssueRejoinTicket(t.Context(), &joinproto.IssueRejoinTicketRequest{DiskUuid: testUUID})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("err = %v, want Unauthenticated", err)
	}
}

func TestOverloadAnswersResourceExhaustedWithRetryInfo(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	s, err := New(Config{MasterSecret: testutil.NewMasterSecret(t), MaxConcurrent: 1, Work: func(ctx context.Context) error {
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	serviceCreds, nodeCreds := atlsPair(t)
	client := joinproto.NewAPIClient(dial(t, startService(t, s, serviceCreds), nodeCreds))

	first := make(chan error, 1)
	go func() {
		_, err := client.IssueRejoinTicket(context.Background(), &joinproto.IssueRejoinTicketRequest{DiskUuid: testUUID})
		first <- err
	}()
	<-entered // the only slot is taken

	// Three clients refused at the same time.
	hints := make([]time.Duration, 3)
	errs := make(chan error, 3)
	for i := range hints {
		go func() {
			_, err := client.IssueRejoinTicket(t.Context(), &joinproto.IssueRejoinTicketRequest{DiskUuid: testUUID})
			st := status.Convert(err)
			for _, d := range st.Details() {
				if ri, ok := d.(*errdetails.RetryInfo); ok {
					hints[i] = ri.GetRetryDelay().AsDuration()
				}
			}
			if st.Code() != codes.ResourceExhausted {
				errs <- err
				return
			}
			errs <- nil
		}()
	}
	for range hints {
		if err := <-errs; err != nil {
			t.Fatalf("err = %v, want ResourceExhausted", err)
		}
	}
	// Each is handed its own later slot, one service time apart (nothing
	// completes while they wait, so the estimate is the lower bound: how long
	// the busy request has held its slot), so they do not return together.
	slices.Sort(hints)
	if hints[0] <= 0 {
		t.Fatalf("no positive RetryInfo: %v", hints)
	}
	for i := 1; i < len(hints); i++ {
		if gap := hints[i] - hints[i-1]; gap < initialServiceTime/2 {
			t.Errorf("retry hints %v: slots not spread by the service time", hints)
		}
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("the request holding the slot: %v", err)
	}
}

func TestHealthServing(t *testing.T) {
	s, err := New(Config{MasterSecret: testutil.NewMasterSecret(t), MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	serviceCreds, nodeCreds := atlsPair(t)
	conn := dial(t, startService(t, s, serviceCreds), nodeCreds)
	for _, svc := range []string{"", joinproto.API_ServiceDesc.ServiceName} {
		resp, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("service %q: %v", svc, resp.Status)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{MasterSecret: testutil.NewMasterSecret(t), MaxConcurrent: 0}); err == nil {
		t.Error("MaxConcurrent 0 accepted")
	}
	if _, err := New(Config{MaxConcurrent: 1}); err == nil {
		t.Error("empty master secret accepted")
	}
}
