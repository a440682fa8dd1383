// Package metadata is the client of the QEMU metadata HTTP API, through which
// a node in the test VMs learns its own role and the JoinService endpoints.
//
// # Contract (the server side is written against this)
//
//	GET {base}/self   → 200, one Instance record (this node)
//	GET {base}/peers  → 200, JSON array of Instance records (the cluster,
//	                    this node may be included)
//
// An Instance record is a JSON object
//
//	{"name": "node-1", "role": "ControlPlane", "vpcIP": "10.0.2.100"}
//
// name is non-empty, role is exactly "ControlPlane" or "Worker", vpcIP is an
// IPv4 or IPv6 address without port or zone. Further fields are allowed and
// ignored. Bodies are bounded (MaxResponseSize); anything else is an error.
//
// The JoinService endpoints are vpcIP:30090 of every ControlPlane peer other
// than this node (a control-plane node removes itself: its own JoinService
// cannot have its key before it has unlocked).
package metadata

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// Role is a node's role in the cluster.
type Role string

const (
	RoleControlPlane Role = "ControlPlane"
	RoleWorker       Role = "Worker"
)

// Instance is one record of the metadata API.
type Instance struct {
	Name  string `json:"name"`
	Role  Role   `json:"role"`
	VPCIP string `json:"vpcIP"`
}

func (i Instance) validate() error {
	if i.Name == "" {
		return errors.New("record without name")
	}
	if i.Role != RoleControlPlane && i.Role != RoleWorker {
		return fmt.Errorf("record %q: role %q is neither %q nor %q", i.Name, i.Role, RoleControlPlane, RoleWorker)
	}
	addr, err := netip.ParseAddr(i.VPCIP)
	if err != nil || addr.Zone() != "" {
		return fmt.Errorf("record %q: vpcIP %q is not an IP address", i.Name, i.VPCIP)
	}
	return nil
}

const (
	// MaxResponseSize bounds every response body; a cluster's worth of
	// records is a few KiB.
	MaxResponseSize = 256 << 10
	// DefaultTimeout bounds each request (the API is on the VM's host).
	DefaultTimeout = 5 * time.Second
)

// Client talks to the metadata API at a base URL such as
// "http://10.0.2.2:8080". It implements rejoinclient.EndpointSource.
type Client struct {
	base string
	http *http.Client
}

// New returns a client for the API at baseURL (http or https).
func New(baseURL string) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("metadata API URL %q: %w", baseURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("metadata API URL %q: want http(s)://host[:port][/path]", baseURL)
	}
	return &Client{
		base: strings.TrimSuffix(baseURL, "/"),
		http: &http.Client{
			Timeout: DefaultTimeout,
			Transport: &http.Transport{
				Proxy: nil, // the API is local to the VM; never go through a proxy
				// One request per second at most; idle connections would
				// only outlive the caller.
				DisableKeepAlives:     true,
				ResponseHeaderTimeout: DefaultTimeout,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return errors.New("metadata API redirects are not followed")
			},
		},
	}, nil
}

// Self returns this node's record.
func (c *Client) Self(ctx context.Context) (Instance, error) {
	var self Instance
	if err := c.get(ctx, "/self", &self); err != nil {
		return Instance{}, err
	}
	if err := self.validate(); err != nil {
		return Instance{}, fmt.Errorf("metadata API /self: %w", err)
	}
	return self, nil
}

// Peers returns the records of the cluster's nodes; an empty list is an error.
func (c *Client) Peers(ctx context.Context) ([]Instance, error) {
	var peers []Instance
	if err := c.get(ctx, "/peers", &peers); err != nil {
		return nil, err
	}
	if len(peers) == 0 {
		return nil, errors.New("metadata API /peers: empty list")
	}
	for _, p := range peers {
		if err := p.validate(); err != nil {
			return nil, fmt.Errorf("metadata API /peers: %w", err)
		}
	}
	return peers, nil
}

// Endpoints returns vpcIP:30090 of every control-plane peer except this node.
func (c *Client) Endpoints(ctx context.Context) ([]string, error) {
	self, err := c.Self(ctx)
	if err != nil {
		return nil, err
	}
	peers, err := c.Peers(ctx)
	if err != nil {
		return nil, err
	}
	return JoinEndpoints(self, peers)
}

// JoinEndpoints selects the JoinService endpoints from the records: every
// ControlPlane peer that is not self (same name or same VPC IP).
func JoinEndpoints(self Instance, peers []Instance) ([]string, error) {
	selfIP, _ := netip.ParseAddr(self.VPCIP)
	var endpoints []string
	for _, p := range peers {
		ip, _ := netip.ParseAddr(p.VPCIP)
		if p.Role != RoleControlPlane || p.Name == self.Name || ip == selfIP {
			continue
		}
		endpoints = append(endpoints, net.JoinHostPort(ip.String(), strconv.Itoa(constants.JoinServicePort)))
	}
	if len(endpoints) == 0 {
		return nil, fmt.Errorf("metadata API lists no control-plane node besides %q", self.Name)
	}
	return endpoints, nil
}

// get fetches base+path and decodes exactly one JSON value into v.
func (c *Client) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return fmt.Errorf("metadata API %s: %w", path, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("metadata API %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseSize+1))
	if err != nil {
		return fmt.Errorf("metadata API %s: reading body: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("metadata API %s: HTTP %s", path, resp.Status)
	}
	if len(body) > MaxResponseSize {
		return fmt.Errorf("metadata API %s: response larger than %d bytes", path, MaxResponseSize)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("metadata API %s: invalid JSON: %w", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("metadata API %s: invalid JSON: trailing data after the first value", path)
	}
	return nil
}
