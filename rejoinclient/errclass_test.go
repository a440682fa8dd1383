package rejoinclient

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/unlock"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Pure mapping; the TestServe* tests check the classes of real gRPC errors
// (refused, timeout, tls_handshake, resource_exhausted, permission_denied).
func TestClassify(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("rejected: %w", unlock.ErrWrongKey):  "wrong_key",
		fmt.Errorf("rejected: %w", unlock.ErrMalformed): "malformed",
		errMalformedTicket:       "malformed",
		context.DeadlineExceeded: "timeout",
		status.Error(codes.DeadlineExceeded, "context deadline exceeded"):                    "timeout",
		status.Error(codes.Unavailable, "dial tcp 10.9.0.5:30090: i/o timeout"):              "timeout",
		status.Error(codes.Unavailable, "dial tcp 127.0.0.1:1: connect: connection refused"): "refused",
		status.Error(codes.Unavailable, "connection closed before server preface received"):  "unavailable",
		status.Error(codes.ResourceExhausted, "busy"):                                        "resource_exhausted",
		status.Error(codes.PermissionDenied, "measurements"):                                 "permission_denied",
		status.Error(codes.Canceled, "context canceled"):                                     "canceled",
		errors.New("something else"):                                                         "error",
	} {
		if got := classify(err); got != want {
			t.Errorf("classify(%v) = %q, want %q", err, got, want)
		}
	}
}

func TestRetryHint(t *testing.T) {
	withDelay := func(code codes.Code, d *durationpb.Duration) error {
		st, err := status.New(code, "x").WithDetails(&errdetails.RetryInfo{RetryDelay: d})
		if err != nil {
			t.Fatal(err)
		}
		return st.Err()
	}
	for name, tc := range map[string]struct {
		err  error
		want time.Duration
		ok   bool
	}{
		"hint":             {withDelay(codes.ResourceExhausted, durationpb.New(3*time.Second)), 3 * time.Second, true},
		"capped":           {withDelay(codes.ResourceExhausted, durationpb.New(100*time.Hour)), maxRetryHint, true},
		"negative ignored": {withDelay(codes.ResourceExhausted, durationpb.New(-time.Second)), 0, false},
		"other code":       {withDelay(codes.Unavailable, durationpb.New(time.Second)), 0, false},
		"no detail":        {status.Error(codes.ResourceExhausted, "x"), 0, false},
		"not a status":     {errors.New("x"), 0, false},
	} {
		got, ok := retryHint(tc.err)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: retryHint = %v, %v; want %v, %v", name, got, ok, tc.want, tc.ok)
		}
	}
}
