// Package gcp is disk-mapper's Google Compute Engine provider: the state disk
// is the persistent disk attached with device name "state-disk", and role and
// JoinService endpoints are custom instance attributes read from the metadata
// server (https://cloud.google.com/compute/docs/metadata/querying-metadata).
package gcp

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/diskmapper/disk-mapper/cloud"
	"github.com/diskmapper/disk-mapper/cloud/internal/imds"
)

const (
	// Name is the --cloud-provider value.
	Name = "gcp"
	// DefaultBaseURL is the metadata server. Its documented names are
	// metadata.google.internal and 169.254.169.254; the initrd has no
	// resolver, so the address
	// (https://cloud.google.com/compute/docs/metadata/querying-metadata#metadata_server_endpoints).
	DefaultBaseURL = "http://169.254.169.254"
	// StateDisk is the udev name of a disk attached with device_name
	// "state-disk": google-guest-configs' 65-gce-disk-naming.rules link
	// /dev/disk/by-id/google-<device name>
	// (https://cloud.google.com/compute/docs/disks/disk-symlinks).
	StateDisk = "/dev/disk/by-id/google-state-disk"

	// flavorHeader must be on every request and is checked on every
	// response: the server rejects requests without it (403), and a
	// response without it did not come from the metadata server
	// (https://cloud.google.com/compute/docs/metadata/querying-metadata#querying).
	flavorHeader = "Metadata-Flavor"
	flavorValue  = "Google"

	attributePath = "/computeMetadata/v1/instance/attributes/"
	// ipPath is nic0's internal address
	// (https://cloud.google.com/compute/docs/metadata/predefined-metadata-keys#instance-metadata).
	ipPath = "/computeMetadata/v1/instance/network-interfaces/0/ip"
)

// Client reads the contract from the metadata server.
type Client struct {
	base string
	http *http.Client
}

// New returns a client of the metadata server at base ("" = DefaultBaseURL)
// with a per-request timeout (0 = imds.DefaultTimeout).
func New(base string, timeout time.Duration) (*Client, error) {
	if base == "" {
		base = DefaultBaseURL
	}
	b, err := imds.ParseBase(base)
	if err != nil {
		return nil, err
	}
	return &Client{base: b, http: imds.NewHTTPClient(timeout)}, nil
}

func (c *Client) Name() string      { return Name }
func (c *Client) StateDisk() string { return StateDisk }

// get reads one metadata value as printable text.
func (c *Client) get(ctx context.Context, path string) (string, error) {
	what := "GCP metadata " + path
	req, err := imds.NewGet(ctx, c.base, path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set(flavorHeader, flavorValue)
	resp, err := imds.Do(c.http, req, cloud.MaxValueSize)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	// Checked before the status: an answer without the header is not the
	// metadata server's, whatever it says.
	if resp.Header.Get(flavorHeader) != flavorValue {
		return "", fmt.Errorf("%s: response without %s: %s", what, flavorHeader, flavorValue)
	}
	if resp.Status == http.StatusNotFound {
		return "", fmt.Errorf("%s: not set (HTTP 404)", what)
	}
	if resp.Status != http.StatusOK {
		return "", imds.StatusError(what, resp)
	}
	return imds.Text(what, resp.Body)
}

// Self reads the role attribute and nic0's address.
func (c *Client) Self(ctx context.Context) (cloud.Self, error) { return c.keys().Self(ctx) }

// Endpoints reads the attributes afresh (no cache: one round, one read).
func (c *Client) Endpoints(ctx context.Context) ([]string, error) { return c.keys().Endpoints(ctx) }

func (c *Client) keys() cloud.KeyValueMetadata {
	return cloud.KeyValueMetadata{Name: "GCP metadata", Get: c.get, KeyPath: attributePath, IPPath: ipPath}
}
