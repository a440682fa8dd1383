package rejoinclient

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/diskmapper/disk-mapper/internal/unlock"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error classes: a short, stable word per failure kind, logged next to the
// full error so that operators and tests can match on it.
const (
	classTimeout           = "timeout"
	classRefused           = "refused"
	classHandshake         = "tls_handshake"
	classUnavailable       = "unavailable"
	classResourceExhausted = "resource_exhausted"
	classWrongKey          = "wrong_key"
	classMalformed         = "malformed"
	classCanceled          = "canceled"
	classRejected          = "rejected" // check failed for another reason
	classOther             = "error"
)

// classify names the kind of failure of one attempt.
func classify(err error) string {
	switch {
	case errors.Is(err, unlock.ErrWrongKey):
		return classWrongKey
	case errors.Is(err, unlock.ErrMalformed), errors.Is(err, errMalformedTicket):
		return classMalformed
	case errors.Is(err, errRefused):
		return classRefused
	case errors.Is(err, context.DeadlineExceeded):
		return classTimeout
	case errors.Is(err, context.Canceled):
		return classCanceled
	}
	st, ok := status.FromError(err)
	if !ok {
		return classOther
	}
	msg := st.Message()
	switch st.Code() {
	case codes.DeadlineExceeded:
		return classTimeout
	case codes.Canceled:
		return classCanceled
	case codes.ResourceExhausted:
		return classResourceExhausted
	case codes.Unavailable:
		switch {
		case strings.Contains(msg, "connection refused"):
			return classRefused
		case strings.Contains(msg, "i/o timeout"):
			return classTimeout
		case strings.Contains(msg, "authentication handshake failed"):
			return classHandshake
		}
		return classUnavailable
	}
	return snakeCase(st.Code().String())
}

// snakeCase turns "PermissionDenied" into "permission_denied".
func snakeCase(s string) string {
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// maxRetryHint bounds how long a server's RetryInfo may hold off an
// endpoint: the hint is honoured, but an endpoint we do not trust yet must not
// be able to park us for hours.
const maxRetryHint = 10 * time.Minute

// retryHint returns the server's RetryInfo delay of a RESOURCE_EXHAUSTED
// status, if it carries one.
func retryHint(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return 0, false
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.RetryInfo)
		if !ok || info.GetRetryDelay() == nil {
			continue
		}
		if err := info.GetRetryDelay().CheckValid(); err != nil {
			continue
		}
		delay := info.GetRetryDelay().AsDuration()
		if delay < 0 {
			continue
		}
		return min(delay, maxRetryHint), true
	}
	return 0, false
}
