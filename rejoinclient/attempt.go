package rejoinclient

import (
	"context"
	"errors"
	"fmt"

	"github.com/diskmapper/disk-mapper/internal/unlock"
	join "github.com/diskmapper/disk-mapper/joinproto"
	"google.golang.org/grpc"
)

// maxTicketSize bounds the response we accept from an endpoint: a ticket is
// three 32-byte secrets, so anything near this size is not a ticket.
const maxTicketSize = 4 << 10

// errMalformedTicket: the endpoint answered, but without the secrets a ticket
// must carry.
var errMalformedTicket = errors.New("rejoin ticket lacks the state disk key or the measurement secret")

// requestTicket asks one endpoint for this disk's rejoin ticket. Every
// attempt gets its own connection (closed before returning) and a deadline
// derived from ctx, so cancelling ctx aborts the dial, the handshake and the
// RPC alike.
func (c *Client) requestTicket(ctx context.Context, endpoint string) (unlock.Key, error) {
	ctx, cancel := context.WithTimeout(ctx, c.attemptTimeout)
	defer cancel()

	// passthrough: the endpoint is dialled as given, no DNS resolver is
	// involved (the initrd has none, and a list of IPs needs none).
	conn, err := grpc.NewClient("passthrough:///"+endpoint,
		grpc.WithTransportCredentials(c.creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxTicketSize)),
	)
	if err != nil {
		return unlock.Key{}, fmt.Errorf("creating gRPC client for %s: %w", endpoint, err)
	}
	defer conn.Close()

	resp, err := join.NewAPIClient(conn).IssueRejoinTicket(ctx, &join.IssueRejoinTicketRequest{DiskUuid: c.diskUUID})
	if err != nil {
		return unlock.Key{}, err
	}
	key := unlock.Key{
		DiskKey:           resp.GetStateDiskKey(),
		MeasurementSecret: resp.GetMeasurementSecret(),
		MeasurementSalt:   resp.GetMeasurementSalt(),
	}
	if len(key.DiskKey) == 0 || len(key.MeasurementSecret) == 0 {
		key.Zero()
		return unlock.Key{}, errMalformedTicket
	}
	return key, nil
}
