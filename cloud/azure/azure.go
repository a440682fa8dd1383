// Package azure is disk-mapper's Azure provider: the state disk is the data
// disk at a configurable LUN, role and JoinService endpoints are VM tags
// from IMDS, and the load balancer's frontend for port 30090 comes from
// IMDS's /metadata/loadbalancer
// (https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service,
// https://learn.microsoft.com/azure/load-balancer/howto-load-balancer-imds).
package azure

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
	"strconv"
	"time"

	"github.com/diskmapper/disk-mapper/cloud"
	"github.com/diskmapper/disk-mapper/cloud/internal/imds"
	"github.com/diskmapper/disk-mapper/internal/constants"
)

const (
	// Name is the --cloud-provider value.
	Name = "azure"
	// DefaultBaseURL is IMDS (169.254.169.254, no name).
	DefaultBaseURL = "http://169.254.169.254"
	// instanceAPIVersion and lbAPIVersion are the api-version values sent;
	// IMDS answers 400 without one. 2021-02-01 has compute.tagsList and
	// network; /metadata/loadbalancer exists since 2020-10-01.
	instanceAPIVersion = "2021-02-01"
	lbAPIVersion       = "2020-10-01"
	instancePath       = "/metadata/instance?api-version=" + instanceAPIVersion + "&format=json"
	lbPath             = "/metadata/loadbalancer?api-version=" + lbAPIVersion + "&format=json"
	// The instance document carries every tag and the network config; a
	// few KiB normally, 64 KiB leaves room for many tags.
	maxDocument = 64 << 10
	// MaxLUN: Azure data disk LUNs are 0–63.
	MaxLUN = 63
)

// StateDisk is the WALinuxAgent udev name of the data disk at lun
// (66-azure-storage.rules: /dev/disk/azure/scsi1/lun<N>;
// https://learn.microsoft.com/troubleshoot/azure/virtual-machines/linux/troubleshoot-device-names-problems).
func StateDisk(lun int) string { return "/dev/disk/azure/scsi1/lun" + strconv.Itoa(lun) }

// Client reads the contract from IMDS.
type Client struct {
	base string
	lun  int
	http *http.Client
}

// New returns a client of IMDS at base ("" = DefaultBaseURL) for a state
// disk at lun, with a per-request timeout (0 = imds.DefaultTimeout).
func New(base string, lun int, timeout time.Duration) (*Client, error) {
	if lun < 0 || lun > MaxLUN {
		return nil, fmt.Errorf("Azure LUN %d is not in 0–%d", lun, MaxLUN)
	}
	if base == "" {
		base = DefaultBaseURL
	}
	b, err := imds.ParseBase(base)
	if err != nil {
		return nil, err
	}
	return &Client{base: b, lun: lun, http: imds.NewHTTPClient(timeout)}, nil
}

func (c *Client) Name() string      { return Name }
func (c *Client) StateDisk() string { return StateDisk(c.lun) }

// errNotFound: IMDS answered 404 (e.g. no Standard load balancer).
var errNotFound = errors.New("HTTP 404")

// getJSON fetches path with Metadata: true and decodes exactly one JSON value.
func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	what := "Azure IMDS " + path
	req, err := imds.NewGet(ctx, c.base, path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	// Required on every request; IMDS also refuses requests carrying
	// X-Forwarded-For, which we never send.
	req.Header.Set("Metadata", "true")
	resp, err := imds.Do(c.http, req, maxDocument)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if resp.Status == http.StatusNotFound {
		return fmt.Errorf("%s: %w", what, errNotFound)
	}
	if resp.Status != http.StatusOK {
		return imds.StatusError(what, resp)
	}
	dec := json.NewDecoder(bytes.NewReader(resp.Body))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: invalid JSON: %w", what, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%s: invalid JSON: trailing data", what)
	}
	return nil
}

// instanceDoc is the part of /metadata/instance we read.
type instanceDoc struct {
	Compute struct {
		TagsList []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"tagsList"`
	} `json:"compute"`
	Network struct {
		Interface []struct {
			IPv4 struct {
				IPAddress []struct {
					PrivateIPAddress string `json:"privateIpAddress"`
				} `json:"ipAddress"`
			} `json:"ipv4"`
		} `json:"interface"`
	} `json:"network"`
}

// lbDoc is /metadata/loadbalancer.
type lbDoc struct {
	LoadBalancer struct {
		InboundRules []struct {
			FrontendIPAddress string `json:"frontendIpAddress"`
			Protocol          string `json:"protocol"`
			FrontendPort      int    `json:"frontendPort"`
			BackendPort       int    `json:"backendPort"`
		} `json:"inboundRules"`
	} `json:"loadbalancer"`
}

// read returns self and the tag endpoints ("" if the tag is absent).
func (c *Client) read(ctx context.Context) (cloud.Self, string, bool, error) {
	var doc instanceDoc
	if err := c.getJSON(ctx, instancePath, &doc); err != nil {
		return cloud.Self{}, "", false, err
	}
	tags := map[string]string{}
	for _, t := range doc.Compute.TagsList {
		if _, dup := tags[t.Name]; dup {
			return cloud.Self{}, "", false, fmt.Errorf("Azure IMDS: tag %q twice", cloud.Clip(t.Name))
		}
		tags[t.Name] = t.Value
	}
	rv, ok := tags[cloud.KeyRole]
	if !ok {
		return cloud.Self{}, "", false, fmt.Errorf("Azure IMDS: no %s tag", cloud.KeyRole)
	}
	role, err := cloud.ParseRole(rv)
	if err != nil {
		return cloud.Self{}, "", false, fmt.Errorf("Azure IMDS: %w", err)
	}
	if len(doc.Network.Interface) == 0 || len(doc.Network.Interface[0].IPv4.IPAddress) == 0 {
		return cloud.Self{}, "", false, errors.New("Azure IMDS: no private IPv4 address on the first interface")
	}
	ip, err := cloud.ParseIP("Azure IMDS privateIpAddress", doc.Network.Interface[0].IPv4.IPAddress[0].PrivateIPAddress)
	if err != nil {
		return cloud.Self{}, "", false, err
	}
	eps, found := tags[cloud.KeyJoinEndpoints]
	return cloud.Self{Role: role, IP: ip}, eps, found, nil
}

// Self reads the role tag and the first interface's private address.
func (c *Client) Self(ctx context.Context) (cloud.Self, error) {
	self, _, _, err := c.read(ctx)
	return self, err
}

// loadBalancer returns the frontends that forward to the JoinService port.
func (c *Client) loadBalancer(ctx context.Context) ([]string, error) {
	var doc lbDoc
	if err := c.getJSON(ctx, lbPath, &doc); err != nil {
		return nil, err
	}
	var out []string
	for _, r := range doc.LoadBalancer.InboundRules {
		if r.BackendPort != constants.JoinServicePort || (r.Protocol != "tcp" && r.Protocol != "Tcp") {
			continue
		}
		ip, err := netip.ParseAddr(r.FrontendIPAddress)
		if err != nil || ip.Zone() != "" || r.FrontendPort <= 0 || r.FrontendPort > 65535 {
			return nil, fmt.Errorf("Azure IMDS loadbalancer: bad inbound rule %q:%d", cloud.Clip(r.FrontendIPAddress), r.FrontendPort)
		}
		out = append(out, net.JoinHostPort(ip.Unmap().String(), strconv.Itoa(r.FrontendPort)))
	}
	return out, nil
}

// Endpoints is the tag's list plus the load balancer frontends for 30090.
// Either may be absent, not both; a load balancer lookup that fails is only
// fatal if the tag names nothing (a broken LB lookup blocked every join on
// STACKIT, edgelesssys/constellation#3496).
func (c *Client) Endpoints(ctx context.Context) ([]string, error) {
	self, tagValue, tagFound, err := c.read(ctx)
	if err != nil {
		return nil, err
	}
	var eps []string
	if tagFound {
		if eps, err = cloud.ParseEndpoints(tagValue); err != nil {
			return nil, fmt.Errorf("Azure IMDS: %w", err)
		}
	}
	lb, lbErr := c.loadBalancer(ctx)
	eps = append(eps, lb...)
	if len(eps) == 0 {
		if lbErr == nil {
			lbErr = errors.New("no inbound rule for port " + strconv.Itoa(constants.JoinServicePort))
		}
		return nil, fmt.Errorf("Azure IMDS: no %s tag, and no load balancer endpoint: %w", cloud.KeyJoinEndpoints, lbErr)
	}
	// A control-plane node drops only its own address (never an LB frontend).
	return cloud.JoinEndpoints(self, eps)
}
