package recoveryserver

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/recoverproto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: code %v (%v), want %v", what, got, err, want)
	}
}

func TestRightKeyOverTLS(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	serverCreds, clientCreds := selfSignedTLS(t)
	checker := &keyChecker{right: s.diskKey}
	h := startServer(t, checker, withCredentials(serverCreds))

	cc := dial(t, h.addr, clientCreds)
	uuid, err := push(testContext(t), cc, s.secret, s.salt, s.diskKey)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	if uuid != testUUID {
		t.Errorf("disk UUID %q, want %q", uuid, testUUID)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v, want nil after an accepted key", err)
	}
	if conn, err := net.Dial("tcp", h.addr); err == nil {
		conn.Close()
		t.Error("listener still accepts connections after Serve returned")
	}

	if calls, _ := checker.stats(); calls != 1 {
		t.Fatalf("check called %d times, want 1", calls)
	}
	// Serve has returned, so every handler has ended: the key the check saw
	// must be zero now (it was compared byte for byte above while live).
	got := checker.seen[0]
	for name, b := range map[string][]byte{"disk key": got.DiskKey, "measurement secret": got.MeasurementSecret, "salt": got.MeasurementSalt} {
		if len(b) != 32 {
			t.Errorf("%s: %d bytes handed to check, want 32", name, len(b))
		}
		for _, x := range b {
			if x != 0 {
				t.Errorf("%s not zeroed after check", name)
				break
			}
		}
	}
	cc.Close()
}

func TestTLSClientWithoutTrustIsRefused(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	serverCreds, _ := selfSignedTLS(t)
	_, otherClientCreds := selfSignedTLS(t) // trusts a different certificate
	checker := &keyChecker{right: s.diskKey}
	h := startServer(t, checker, withCredentials(serverCreds))

	cc := dial(t, h.addr, otherClientCreds)
	_, err := push(testContext(t), cc, s.secret, nil, s.diskKey)
	wantCode(t, "push with an untrusted server certificate", err, codes.Unavailable)
	if calls, _ := checker.stats(); calls != 0 {
		t.Errorf("check called %d times, want 0", calls)
	}
	h.stillServing(t)
	cc.Close()
	h.cancel()
	if err := h.waitServe(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v, want context.Canceled", err)
	}
}

func TestWrongKeyThenRightKey(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey})
	cc := dial(t, h.addr, nil)
	ctx := testContext(t)

	_, err := push(ctx, cc, s.secret, nil, s.wrongKey)
	wantCode(t, "wrong key", err, codes.PermissionDenied)
	if msg := status.Convert(err).Message(); msg != "the state disk key does not open this node's disk" {
		t.Errorf("PermissionDenied message %q", msg)
	}
	h.stillServing(t)

	if _, err := push(ctx, cc, s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("right key on a new stream: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	cc.Close()
}

func TestMalformedInputKeepsServing(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	checker := &keyChecker{right: s.diskKey}
	h := startServer(t, checker)
	cc := dial(t, h.addr, nil)
	ctx := testContext(t)

	secretMsg := func(secret, salt []byte) *recoverproto.RecoverMessage {
		return &recoverproto.RecoverMessage{
			Request:         &recoverproto.RecoverMessage_MeasurementSecret{MeasurementSecret: clone(secret)},
			MeasurementSalt: clone(salt),
		}
	}
	keyMsg := func(key, salt []byte) *recoverproto.RecoverMessage {
		return &recoverproto.RecoverMessage{
			Request:         &recoverproto.RecoverMessage_StateDiskKey{StateDiskKey: clone(key)},
			MeasurementSalt: clone(salt),
		}
	}
	cases := map[string][]*recoverproto.RecoverMessage{
		"key first":                  {keyMsg(s.diskKey, nil)},
		"5-byte secret":              {secretMsg(s.secret[:5], nil)},
		"empty message":              {{}},
		"empty second message":       {secretMsg(s.secret, nil), {}},
		"secret twice":               {secretMsg(s.secret, nil), secretMsg(s.secret, nil)},
		"5-byte key":                 {secretMsg(s.secret, nil), keyMsg(s.diskKey[:5], nil)},
		"33-byte key":                {secretMsg(s.secret, nil), keyMsg(append(clone(s.diskKey), 0), nil)},
		"5-byte salt":                {secretMsg(s.secret, s.salt[:5])},
		"two different salts":        {secretMsg(s.secret, s.salt), keyMsg(s.diskKey, s.wrongKey)},
		"stream closed after secret": {secretMsg(s.secret, nil)},
		"stream closed at once":      nil,
	}
	for name, msgs := range cases {
		t.Run(name, func(t *testing.T) {
			err := sendRaw(ctx, cc, msgs...)
			wantCode(t, name, err, codes.InvalidArgument)
			h.stillServing(t)
		})
	}
	if calls, _ := checker.stats(); calls != 0 {
		t.Errorf("check called %d times for malformed input, want 0", calls)
	}

	// The salt may ride on the key message instead.
	if err := sendRaw(ctx, cc, secretMsg(s.secret, nil), keyMsg(s.diskKey, s.salt)); err != nil {
		t.Fatalf("right key after malformed pushes: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if got := checker.seen[0].MeasurementSalt; len(got) != 32 {
		t.Errorf("salt from the key message: %d bytes handed to check, want 32", len(got))
	}
	cc.Close()
}

func TestMalformedVerdictFromCheck(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	malformed := func(context.Context, unlock.Key) error { return unlock.ErrMalformed }
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Config{DiskUUID: testUUID, Listener: lis, Credentials: insecure.NewCredentials()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, malformed) }()

	cc := dial(t, lis.Addr().String(), nil)
	_, err = push(testContext(t), cc, s.secret, nil, s.diskKey)
	wantCode(t, "check says malformed", err, codes.InvalidArgument)
	cc.Close()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v, want context.Canceled", err)
	}
}

func TestOversizeMessageKeepsServing(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey})
	cc := dial(t, h.addr, nil)
	ctx := testContext(t)

	huge := make([]byte, 5<<10) // > constants.MaxRecoverMessageSize (4 KiB)
	_, err := push(ctx, cc, huge, nil, s.diskKey)
	wantCode(t, "5 KiB measurement_secret", err, codes.ResourceExhausted)
	h.stillServing(t)

	if _, err := push(ctx, cc, s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("right key after an oversize message: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	cc.Close()
}

func TestPushAfterSuccessIsRefused(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey})
	first := dial(t, h.addr, nil)
	if _, err := push(testContext(t), first, s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("first push: %v", err)
	}
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}

	second := dial(t, h.addr, nil)
	_, err := push(testContext(t), second, s.secret, nil, s.diskKey)
	wantCode(t, "push after success", err, codes.Unavailable)
	first.Close()
	second.Close()
}

func TestCancelWhileClientsMidStream(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	hangKey := testutil.RandomBytes(t, 32)
	checker := &keyChecker{right: s.diskKey, hang: hangKey}
	h := startServer(t, checker, func(c *Config) { c.HandshakeTimeout = time.Minute })
	ctx := testContext(t)

	// One peer stalls in its handshake, one client after measurement_secret;
	// another is inside a check that only ends with its context.
	raw := dialRaw(t, h.addr)
	staller := dial(t, h.addr, nil)
	stalled := stallAfterSecret(t, ctx, staller, s.secret)
	hanger := dial(t, h.addr, nil)
	hangResult := make(chan error, 1)
	go func() {
		_, err := push(ctx, hanger, s.secret, nil, hangKey)
		hangResult <- err
	}()
	waitFor(t, "the hanging check to start", func() bool { calls, _ := checker.stats(); return calls == 1 })

	h.cancel()
	if err := h.waitServe(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v, want context.Canceled", err)
	}
	// The clients are still connected from their side; the server's part is gone.
	assertNoServerGoroutines(t)
	expectClosed(t, raw)

	if _, err := stalled.Recv(); status.Code(err) != codes.Canceled && status.Code(err) != codes.Unavailable {
		t.Errorf("stalled client: %v, want Canceled or Unavailable", err)
	}
	if err := <-hangResult; status.Code(err) != codes.Canceled && status.Code(err) != codes.Unavailable {
		t.Errorf("client in a check: %v, want Canceled or Unavailable", err)
	}
	staller.Close()
	hanger.Close()
}

func TestListenerFailureEndsServe(t *testing.T) {
	verifyNoLeaks(t)
	h := startServer(t, &keyChecker{right: testutil.RandomBytes(t, 32)})
	waitFor(t, "the server to log its start", func() bool { return len(h.logs.String()) > 0 })
	h.listener.Close() // the listener fails under the server
	err := h.waitServe(t)
	if err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v, want the listener's error", err)
	}
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve: %v, want it to wrap net.ErrClosed", err)
	}
}

func TestServeRefusesMisuse(t *testing.T) {
	verifyNoLeaks(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := New(Config{Listener: lis, Credentials: insecure.NewCredentials()}).Serve(context.Background(), nil); err == nil {
		t.Error("Serve with a nil check: nil error")
	}
	if _, err := net.Dial("tcp", lis.Addr().String()); err == nil {
		t.Error("listener left open after a refused Serve")
	}

	lis, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Config{Listener: lis})
	if err := srv.Serve(context.Background(), (&keyChecker{}).check); err == nil {
		t.Error("Serve without credentials: nil error")
	}
	if err := srv.Serve(context.Background(), (&keyChecker{}).check); !errors.Is(err, ErrServed) {
		t.Errorf("second Serve: %v, want ErrServed", err)
	}
	if got := srv.Name(); got != "RecoveryServer" {
		t.Errorf("Name() = %q", got)
	}
}

// waitFor polls cond; the bound only guards against a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// After the accepting push the server waits (bounded) for the operator's
// client to hang up before it closes connections, so the client is never
// reset before it has read the OK.
func TestServeLetsTheWinningClientHangUpFirst(t *testing.T) {
	verifyNoLeaks(t)
	s := newSecrets(t)
	h := startServer(t, &keyChecker{right: s.diskKey})
	cc := dial(t, h.addr, nil)
	if _, err := push(testContext(t), cc, s.secret, nil, s.diskKey); err != nil {
		t.Fatalf("push: %v", err)
	}
	time.Sleep(clientHangUpTimeout / 5)
	h.stillServing(t) // the winning client still holds its connection open
	cc.Close()
	if err := h.waitServe(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
