package rejoinclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/diskmapper/disk-mapper/internal/unlock"
	join "github.com/diskmapper/disk-mapper/joinproto"
	"google.golang.org/grpc"
)

// maxTicketSize bounds the response we accept from an endpoint: a ticket is
// three 32-byte secrets, so anything near this size is not a ticket.
const maxTicketSize = 4 << 10

// maxConnReuseHint is the longest retry hint for which an attempt keeps its
// connection for the next try of the same endpoint. A pushed-back node
// otherwise pays (and makes the JoinService pay) a new aTLS handshake,
// including a TPM quote and its validation, for every retry, which is what
// makes a rejoin storm CPU-bound. Only a connection on which the endpoint
// just answered is kept (it is alive and attested), and only across a
// short wait: a long-held idle connection is a cost on the service.
const maxConnReuseHint = 5 * time.Second

// errMalformedTicket: the endpoint answered, but without the secrets a ticket
// must carry.
var errMalformedTicket = errors.New("rejoin ticket lacks the state disk key or the measurement secret")

// requestTicket asks one endpoint for this disk's rejoin ticket over conn
// (nil: a new connection). Each attempt has a deadline derived from ctx, so
// cancelling ctx aborts the dial, the handshake and the RPC alike. The
// connection is closed before returning, unless the endpoint pushed back
// with a short retry hint: then it is returned as keep, for the next attempt.
func (c *Client) requestTicket(ctx context.Context, endpoint string, conn *grpc.ClientConn) (key unlock.Key, keep *grpc.ClientConn, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.attemptTimeout)
	defer cancel()

	if conn == nil {
		raw, err := dialTCP(ctx, endpoint)
		if err != nil {
			return unlock.Key{}, nil, err
		}
		// passthrough: the endpoint is dialled as given, no DNS resolver is
		// involved (the initrd has none, and a list of IPs needs none).
		conn, err = grpc.NewClient("passthrough:///"+endpoint,
			grpc.WithTransportCredentials(c.creds),
			grpc.WithContextDialer(firstThenDial(raw)),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxTicketSize)),
		)
		if err != nil {
			raw.Close()
			return unlock.Key{}, nil, fmt.Errorf("creating gRPC client for %s: %w", endpoint, err)
		}
	}

	resp, err := join.NewAPIClient(conn).IssueRejoinTicket(ctx, &join.IssueRejoinTicketRequest{DiskUuid: c.diskUUID})
	if err != nil {
		if hint, ok := retryHint(err); ok && hint <= maxConnReuseHint && ctx.Err() == nil {
			return unlock.Key{}, conn, err
		}
		conn.Close()
		return unlock.Key{}, nil, err
	}
	conn.Close()
	key = unlock.Key{
		DiskKey:           resp.GetStateDiskKey(),
		MeasurementSecret: resp.GetMeasurementSecret(),
		MeasurementSalt:   resp.GetMeasurementSalt(),
	}
	if len(key.DiskKey) == 0 || len(key.MeasurementSecret) == 0 {
		key.Zero()
		return unlock.Key{}, nil, errMalformedTicket
	}
	return key, nil, nil
}

// takeConn hands out the connection kept for endpoint, if any. Only Serve's
// goroutine calls the conn-cache methods.
func (c *Client) takeConn(endpoint string) *grpc.ClientConn {
	conn := c.conns[endpoint]
	delete(c.conns, endpoint)
	return conn
}

// keepConn stores an attempt's kept connection for the endpoint's next try.
func (c *Client) keepConn(endpoint string, conn *grpc.ClientConn) {
	if conn == nil {
		return
	}
	if old := c.conns[endpoint]; old != nil && old != conn {
		old.Close()
	}
	c.conns[endpoint] = conn
}

// closeConns closes the kept connections of endpoints not in keep (all of
// them for a nil keep): an endpoint that discovery no longer lists is not
// asked again on an old connection.
func (c *Client) closeConns(keep []string) {
	listed := make(map[string]bool, len(keep))
	for _, e := range keep {
		listed[e] = true
	}
	for e, conn := range c.conns {
		if !listed[e] {
			conn.Close()
			delete(c.conns, e)
		}
	}
}
