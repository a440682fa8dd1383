// Package aws is disk-mapper's EC2 provider: the state disk is the EBS
// volume mapped as /dev/sdb, and role and JoinService endpoints are instance
// tags read through IMDSv2
// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html).
package aws

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/diskmapper/disk-mapper/cloud"
	"github.com/diskmapper/disk-mapper/cloud/internal/imds"
)

const (
	// Name is the --cloud-provider value.
	Name = "aws"
	// DefaultBaseURL is IMDS's IPv4 address
	// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html).
	DefaultBaseURL = "http://169.254.169.254"
	// StateDisk is the block device mapping name of the state volume. On
	// Nitro instances EBS volumes are NVMe devices (/dev/nvmeXn1) and the
	// requested name is only in the controller's vendor-specific identify
	// data; the image's udev rules (amazon-ec2-utils' ebsnvme-id), a
	// helper like Constellation's aws-nvme-disk, or StateDiskLinker
	// (nvme.go) create the /dev/sdb link
	// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/nvme-ebs-volumes.html).
	StateDisk = "/dev/sdb"

	tokenPath = "/latest/api/token"
	// ttlHeader is sent on the PUT and echoed by IMDS on its answer;
	// tokenHeader carries the token on every GET
	// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html#imds-considerations).
	ttlHeader   = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	tokenHeader = "X-Aws-Ec2-Metadata-Token"
	// TokenTTL is what we ask for: a token outlives a few rounds, not the
	// boot (IMDS allows 1 s to 6 h).
	TokenTTL = 5 * time.Minute
	// tokenMargin renews a token this long before it expires, so a GET
	// never races the expiry.
	tokenMargin = 30 * time.Second
	maxToken    = 1 << 10

	// tagPath is where IMDS serves instance tags once the instance has
	// instance_metadata_tags=enabled
	// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/work-with-tags-in-IMDS.html).
	tagPath = "/latest/meta-data/tags/instance/"
	ipPath  = "/latest/meta-data/local-ipv4"
)

// Client reads the contract from IMDSv2. It is safe for concurrent use.
type Client struct {
	base string
	http *http.Client
	now  func() time.Time

	mu      sync.Mutex
	token   string
	expires time.Time
}

// New returns a client of IMDS at base ("" = DefaultBaseURL) with a
// per-request timeout (0 = imds.DefaultTimeout).
func New(base string, timeout time.Duration) (*Client, error) {
	if base == "" {
		base = DefaultBaseURL
	}
	b, err := imds.ParseBase(base)
	if err != nil {
		return nil, err
	}
	return &Client{base: b, http: imds.NewHTTPClient(timeout), now: time.Now}, nil
}

func (c *Client) Name() string      { return Name }
func (c *Client) StateDisk() string { return StateDisk }

// errUnauthorized: IMDS refused the token (expired, or IMDS restarted).
var errUnauthorized = errors.New("IMDS refused the session token (HTTP 401)")

// sessionToken returns a token valid for at least tokenMargin, fetching a
// new one when needed.
func (c *Client) sessionToken(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && c.now().Add(tokenMargin).Before(c.expires) {
		return c.token, nil
	}
	c.token = ""
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.base+tokenPath, nil)
	if err != nil {
		return "", fmt.Errorf("IMDS token: %w", err)
	}
	req.Header.Set(ttlHeader, strconv.Itoa(int(TokenTTL/time.Second)))
	resp, err := imds.Do(c.http, req, maxToken)
	if err != nil {
		return "", fmt.Errorf("IMDS token: %w", err)
	}
	if resp.Status != http.StatusOK {
		// No fallback to tokenless IMDSv1 (the SDK's behaviour on 403/404/
		// 405): a downgrade the host could force.
		return "", imds.StatusError("IMDS token", resp)
	}
	token, err := imds.Text("IMDS token", resp.Body)
	if err != nil || token == "" {
		return "", errors.New("IMDS token: empty or not printable")
	}
	// IMDS echoes the granted TTL; the SDK refuses a token without it
	// (feature/ec2/imds token_provider.go), and so do we.
	ttl, err := strconv.Atoi(resp.Header.Get(ttlHeader))
	if err != nil || ttl <= 0 || ttl > int(TokenTTL/time.Second) {
		return "", fmt.Errorf("IMDS token: bad %s %q in the answer", ttlHeader, cloud.Clip(resp.Header.Get(ttlHeader)))
	}
	c.token, c.expires = token, c.now().Add(time.Duration(ttl)*time.Second)
	return token, nil
}

func (c *Client) dropToken(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == token {
		c.token = ""
	}
}

// get reads one value; on a 401 it fetches a new token and tries once more.
func (c *Client) get(ctx context.Context, path string) (string, error) {
	for try := 0; ; try++ {
		v, err := c.getOnce(ctx, path)
		if errors.Is(err, errUnauthorized) && try == 0 {
			continue
		}
		return v, err
	}
}

func (c *Client) getOnce(ctx context.Context, path string) (string, error) {
	what := "IMDS " + path
	token, err := c.sessionToken(ctx)
	if err != nil {
		return "", err
	}
	req, err := imds.NewGet(ctx, c.base, path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set(tokenHeader, token)
	resp, err := imds.Do(c.http, req, cloud.MaxValueSize)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	switch resp.Status {
	case http.StatusOK:
		return imds.Text(what, resp.Body)
	case http.StatusUnauthorized:
		c.dropToken(token)
		return "", fmt.Errorf("%s: %w", what, errUnauthorized)
	case http.StatusNotFound:
		return "", fmt.Errorf("%s: not set (HTTP 404; is instance_metadata_tags enabled?)", what)
	}
	return "", imds.StatusError(what, resp)
}

// Self reads the role tag and the instance's private address.
func (c *Client) Self(ctx context.Context) (cloud.Self, error) { return c.keys().Self(ctx) }

// Endpoints reads the tags afresh.
func (c *Client) Endpoints(ctx context.Context) ([]string, error) { return c.keys().Endpoints(ctx) }

func (c *Client) keys() cloud.KeyValueMetadata {
	return cloud.KeyValueMetadata{Name: "IMDS", Get: c.get, KeyPath: tagPath, IPPath: ipPath}
}
