package dmctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/diskmapper/disk-mapper/recoverproto"
	"google.golang.org/grpc"
)

// maxResponseSize bounds what a node may send us: a disk UUID.
const maxResponseSize = 1 << 10

var diskUUIDPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// push runs one attempt: connect, attest the node, run the Recover stream.
// It returns the node's disk UUID once the node named it.
func (r *recoverer) push(ctx context.Context, endpoint string, attempt int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.attemptTimeout)
	defer cancel()

	// Every attempt gets its own connection: gRPC's own reconnect backoff
	// (1 s and growing) would otherwise decide when a node that just came
	// up is tried again, not ours; and the handshake outcome is per attempt.
	creds := newHandshakeRecorder(r.creds)
	conn, err := grpc.NewClient("passthrough:///"+endpoint,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseSize)),
	)
	if err != nil {
		return "", permanent(fmt.Errorf("creating gRPC client: %w", err))
	}
	defer conn.Close()

	onDiskUUID := func(diskUUID string) {
		r.progress(Progress{Endpoint: endpoint, Stage: StageDiskUUID, Attempt: attempt, DiskUUID: diskUUID})
	}
	diskUUID, err := r.runStream(ctx, recoverproto.NewAPIClient(conn), onDiskUUID)
	if err != nil {
		return diskUUID, explain(err, creds.failure())
	}
	return diskUUID, nil
}

// runStream speaks the Recover protocol; onDiskUUID hears the node's disk UUID
// before the key is sent.
func (r *recoverer) runStream(ctx context.Context, client recoverproto.APIClient, onDiskUUID func(string)) (string, error) {
	stream, err := client.Recover(ctx)
	if err != nil {
		return "", err
	}
	err = stream.Send(&recoverproto.RecoverMessage{
		Request:         &recoverproto.RecoverMessage_MeasurementSecret{MeasurementSecret: r.measurementSecret},
		MeasurementSalt: r.measurementSalt,
	})
	if err != nil {
		return "", streamError(stream, err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return "", endedEarly(err)
	}
	diskUUID := strings.ToLower(resp.GetDiskUuid())
	if diskUUID == "" {
		return "", permanent(ErrNoDiskUUID)
	}
	if !diskUUIDPattern.MatchString(diskUUID) {
		return "", permanent(fmt.Errorf("node sent a malformed disk UUID %q", resp.GetDiskUuid()))
	}
	onDiskUUID(diskUUID)
	diskKey, err := r.secret.DiskKey(diskUUID)
	if err != nil {
		return diskUUID, permanent(err)
	}
	defer clear(diskKey)
	if err := stream.Send(&recoverproto.RecoverMessage{
		Request: &recoverproto.RecoverMessage_StateDiskKey{StateDiskKey: diskKey},
	}); err != nil {
		return diskUUID, streamError(stream, err)
	}
	if err := stream.CloseSend(); err != nil {
		return diskUUID, err
	}
	// The node answers an accepted key by ending the stream with OK.
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		if err == nil {
			return diskUUID, permanent(errors.New("node sent an unexpected message after the key"))
		}
		return diskUUID, err
	}
	return diskUUID, nil
}

// streamError turns Send's io.EOF (the stream ended) into the stream's status.
func streamError(stream grpc.BidiStreamingClient[recoverproto.RecoverMessage, recoverproto.RecoverResponse], err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return endedEarly(err)
		}
	}
}

// endedEarly reports a stream that the node ended with OK before the
// protocol was through.
func endedEarly(err error) error {
	if errors.Is(err, io.EOF) {
		return permanent(errors.New("node ended the Recover stream before the key exchange finished"))
	}
	return err
}
