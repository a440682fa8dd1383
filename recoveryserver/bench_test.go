package recoveryserver

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// BenchmarkRefusedPush is one wrong-key push over TLS on an open connection:
// the cost an operator pays per retry, and the server's per-push overhead.
func BenchmarkRefusedPush(b *testing.B) {
	s := newSecrets(b)
	serverCreds, clientCreds := selfSignedTLS(b)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	checker := &keyChecker{right: s.diskKey}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- New(Config{DiskUUID: testUUID, Listener: lis, Credentials: serverCreds}).Serve(ctx, checker.check)
	}()
	defer func() { cancel(); <-done }()
	cc := dialBench(b, lis.Addr().String(), clientCreds)
	defer cc.Close()

	b.ResetTimer()
	for b.Loop() {
		if _, err := push(ctx, cc, s.secret, nil, s.wrongKey); status.Code(err) != codes.PermissionDenied {
			b.Fatalf("push: %v", err)
		}
	}
}

// BenchmarkRecoverNode is a whole recovery of one node over TLS: the server
// starts, a fresh client connects and pushes the right key, Serve returns.
func BenchmarkRecoverNode(b *testing.B) {
	s := newSecrets(b)
	serverCreds, clientCreds := selfSignedTLS(b)
	for b.Loop() {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			done <- New(Config{DiskUUID: testUUID, Listener: lis, Credentials: serverCreds}).
				Serve(context.Background(), (&keyChecker{right: s.diskKey}).check)
		}()
		cc := dialBench(b, lis.Addr().String(), clientCreds)
		if _, err := push(context.Background(), cc, s.secret, nil, s.diskKey); err != nil {
			b.Fatalf("push: %v", err)
		}
		if err := <-done; err != nil {
			b.Fatalf("Serve: %v", err)
		}
		cc.Close()
	}
}
