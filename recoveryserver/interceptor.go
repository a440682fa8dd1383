package recoveryserver

import (
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// loggingStreamInterceptor logs one line per finished stream, in the shape
// of the go-grpc-middleware zap interceptor the seed's operators know
// ("finished streaming call with code OK" on logger recoveryServer.gRPC).
func loggingStreamInterceptor(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		code := status.Code(err)
		service, method := splitFullMethod(info.FullMethod)
		if ce := log.Check(levelFor(code), "finished streaming call with code "+code.String()); ce != nil {
			ce.Write(
				logging.Event("grpc_call_finished"),
				zap.String("grpc.start_time", start.UTC().Format(time.RFC3339)),
				zap.String("system", "grpc"),
				zap.String("span.kind", "server"),
				zap.String("grpc.service", service),
				zap.String("grpc.method", method),
				zap.String("peer.address", peerAddress(ss.Context())),
				zap.String("grpc.code", code.String()),
				zap.Float64("grpc.time_ms", durationMillis(time.Since(start))),
			)
		}
		return err
	}
}

// splitFullMethod turns "/recoverproto.API/Recover" into its service and
// method.
func splitFullMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndex(full, "/"); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}

// durationMillis rounds to microseconds, as the seed's 15.701 does.
func durationMillis(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

// levelFor follows go-grpc-middleware's DefaultCodeToLevel: client mistakes
// are INFO, refusals WARN, server faults ERROR.
func levelFor(code codes.Code) zapcore.Level {
	switch code {
	case codes.OK, codes.Canceled, codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.Unauthenticated:
		return zapcore.InfoLevel
	case codes.DeadlineExceeded, codes.PermissionDenied, codes.ResourceExhausted, codes.FailedPrecondition,
		codes.Aborted, codes.OutOfRange:
		return zapcore.WarnLevel
	default:
		return zapcore.ErrorLevel
	}
}
