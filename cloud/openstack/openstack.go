// Package openstack is disk-mapper's OpenStack provider: the state disk is
// the second virtio disk, and role and JoinService endpoints are server
// metadata ("meta") from the metadata service's meta_data.json
// (https://docs.openstack.org/nova/latest/user/metadata.html#metadata-openstack-format).
package openstack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/diskmapper/disk-mapper/cloud"
	"github.com/diskmapper/disk-mapper/cloud/internal/imds"
)

const (
	// Name is the --cloud-provider value.
	Name = "openstack"
	// DefaultBaseURL is the metadata service
	// (https://docs.openstack.org/nova/latest/user/metadata.html#metadata-service).
	DefaultBaseURL = "http://169.254.169.254"
	// StateDisk is the second virtio disk (boot_index=1), as Constellation's
	// OpenStack images use it.
	StateDisk = "/dev/vdb"

	// metaDataPath pins a dated version (Nova keeps old versions served);
	// 2018-08-27 is what Constellation reads.
	metaDataPath = "/openstack/2018-08-27/meta_data.json"
	// ipPath is the EC2-compatible fixed address
	// (https://docs.openstack.org/nova/latest/user/metadata.html#metadata-ec2-format).
	ipPath = "/latest/meta-data/local-ipv4"
	// meta_data.json also carries keys and, with config drive, more; 64
	// KiB is ample. Nova caps each meta value at 255 characters.
	maxDocument = 64 << 10
)

// Client reads the contract from the metadata service.
type Client struct {
	base string
	http *http.Client
}

// New returns a client of the metadata service at base ("" =
// DefaultBaseURL) with a per-request timeout (0 = imds.DefaultTimeout).
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

func (c *Client) get(ctx context.Context, path string, limit int64) ([]byte, error) {
	what := "OpenStack metadata " + path
	req, err := imds.NewGet(ctx, c.base, path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	resp, err := imds.Do(c.http, req, limit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if resp.Status != http.StatusOK {
		return nil, imds.StatusError(what, resp)
	}
	return resp.Body, nil
}

// metaData is the part of meta_data.json we read.
type metaData struct {
	Meta map[string]string `json:"meta"`
}

func (c *Client) read(ctx context.Context) (cloud.Self, map[string]string, error) {
	body, err := c.get(ctx, metaDataPath, maxDocument)
	if err != nil {
		return cloud.Self{}, nil, err
	}
	var md metaData
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&md); err != nil {
		return cloud.Self{}, nil, fmt.Errorf("OpenStack meta_data.json: invalid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return cloud.Self{}, nil, fmt.Errorf("OpenStack meta_data.json: invalid JSON: trailing data")
	}
	rv, ok := md.Meta[cloud.KeyRole]
	if !ok {
		return cloud.Self{}, nil, fmt.Errorf("OpenStack meta_data.json: no meta %s", cloud.KeyRole)
	}
	role, err := cloud.ParseRole(rv)
	if err != nil {
		return cloud.Self{}, nil, fmt.Errorf("OpenStack meta_data.json: %w", err)
	}
	ipBody, err := c.get(ctx, ipPath, 64)
	if err != nil {
		return cloud.Self{}, nil, err
	}
	ip, err := cloud.ParseIP("OpenStack metadata "+ipPath, string(ipBody))
	if err != nil {
		return cloud.Self{}, nil, err
	}
	return cloud.Self{Role: role, IP: ip}, md.Meta, nil
}

// Self reads the role from meta and the fixed address.
func (c *Client) Self(ctx context.Context) (cloud.Self, error) {
	self, _, err := c.read(ctx)
	return self, err
}

// Endpoints reads meta_data.json afresh.
func (c *Client) Endpoints(ctx context.Context) ([]string, error) {
	self, meta, err := c.read(ctx)
	if err != nil {
		return nil, err
	}
	v, ok := meta[cloud.KeyJoinEndpoints]
	if !ok {
		return nil, fmt.Errorf("OpenStack meta_data.json: no meta %s", cloud.KeyJoinEndpoints)
	}
	eps, err := cloud.ParseEndpoints(v)
	if err != nil {
		return nil, fmt.Errorf("OpenStack meta_data.json: %w", err)
	}
	return cloud.JoinEndpoints(self, eps)
}
