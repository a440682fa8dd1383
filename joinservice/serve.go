package joinservice

import (
	"context"
	"net"
	"time"

	"github.com/diskmapper/disk-mapper/internal/logging"

	"github.com/diskmapper/disk-mapper/joinproto"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// maxRequestSize bounds a request: a disk UUID is 36 bytes.
const maxRequestSize = 1 << 10

// stopGrace bounds the graceful part of a shutdown.
const stopGrace = 5 * time.Second

// Serve runs s on lis with creds, together with the standard gRPC health
// service, until ctx is cancelled; then it stops gracefully.
func (s *Server) Serve(ctx context.Context, lis net.Listener, creds credentials.TransportCredentials) error {
	gs := grpc.NewServer(grpc.Creds(creds), grpc.MaxRecvMsgSize(maxRequestSize))
	joinproto.RegisterAPIServer(gs, s)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(joinproto.API_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)

	s.log.Info("Starting JoinService", logging.Event("joinservice_started"),
		zap.String("endpoint", lis.Addr().String()), zap.Int("maxConcurrent", cap(s.admission.slots)))
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	hs.Shutdown()
	// Graceful first, so in-flight tickets are delivered; bounded, so a
	// stuck client cannot hold the shutdown.
	timer := time.AfterFunc(stopGrace, gs.Stop)
	defer timer.Stop()
	gs.GracefulStop()
	<-served
	s.log.Info("JoinService stopped", logging.Event("joinservice_stopped"))
	return nil
}
