// Package cloud is what every cloud provider of disk-mapper decides: where
// the state disk is, who this node is (its role and VPC IP), and where the
// JoinService is. The providers (cloud/gcp, cloud/aws, cloud/azure,
// cloud/openstack) read it all from anonymous instance metadata that
// provisioning writes, so the node needs no cloud API credentials and makes a
// handful of link-local requests per round instead of Constellation's N+1
// control-plane API calls (see docs/providers.md for the contract).
//
// In a confidential VM the cloud host is the adversary and it serves the
// metadata. Every answer is therefore parsed strictly and bounded, and the
// worst a hostile answer can do is make the node wait: the endpoints it names
// still have to pass aTLS against the image's --join-ca, and the state disk
// path it cannot choose (that is the image's, or a flag).
package cloud

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/diskmapper/disk-mapper/rejoinclient"
)

// The provisioning contract: the metadata keys (GCP instance attributes, AWS
// instance tags, Azure VM tags, OpenStack server metadata) that provisioning
// sets on every node. docs/providers.md is the user-facing copy.
const (
	// KeyRole is the node's role: exactly RoleControlPlane or RoleWorker.
	KeyRole = "disk-mapper-role"
	// KeyJoinEndpoints lists the JoinService endpoints: comma-separated
	// IP or IP:PORT entries ([IPv6]:PORT), the port defaulting to 30090.
	// Names are refused: the initrd has no resolver.
	KeyJoinEndpoints = "disk-mapper-join-endpoints"
)

// Role is a node's role as provisioning writes it.
type Role string

const (
	RoleControlPlane Role = "control-plane"
	RoleWorker       Role = "worker"
)

// MaxValueSize bounds one metadata value. Azure tag values and OpenStack
// metadata values are at most 256/255 characters; GCP attributes and AWS
// tags allow more, but 4 KiB is already ~180 endpoints.
const MaxValueSize = 4 << 10

// maxEndpoints bounds how many endpoints one answer may name: every one of
// them costs an attempt per round.
const maxEndpoints = 64

// Self is what the metadata says about this node.
type Self struct {
	Role Role
	// IP is the node's own VPC address; a control-plane node drops it from
	// the endpoint list (its own JoinService cannot know its key before the
	// node is up).
	IP netip.Addr
}

// ParseRole accepts exactly the contract's two role values.
func ParseRole(v string) (Role, error) {
	switch r := Role(strings.TrimSpace(v)); r {
	case RoleControlPlane, RoleWorker:
		return r, nil
	}
	return "", fmt.Errorf("%s %q is neither %q nor %q", KeyRole, clip(v), RoleControlPlane, RoleWorker)
}

// ParseIP parses the node's own address as the metadata gives it (plain
// text, maybe with a trailing newline).
func ParseIP(what, v string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(strings.TrimSpace(v))
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IP address", what, clip(v))
	}
	return ip.Unmap(), nil
}

// ParseEndpoints parses a KeyJoinEndpoints value.
func ParseEndpoints(v string) ([]string, error) {
	if len(v) > MaxValueSize {
		return nil, fmt.Errorf("%s longer than %d bytes", KeyJoinEndpoints, MaxValueSize)
	}
	eps, err := rejoinclient.ParseEndpoints(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", KeyJoinEndpoints, err)
	}
	if len(eps) > maxEndpoints {
		return nil, fmt.Errorf("%s names %d endpoints, more than %d", KeyJoinEndpoints, len(eps), maxEndpoints)
	}
	return eps, nil
}

// JoinEndpoints is the round's endpoint list: eps without this node's own
// address if it is a control-plane node. An empty result is an error (the
// round fails and the RejoinClient tries again after its backoff).
func JoinEndpoints(self Self, eps []string) ([]string, error) {
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		if self.Role == RoleControlPlane {
			if ap, err := netip.ParseAddrPort(e); err == nil && ap.Addr().Unmap() == self.IP {
				continue
			}
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("metadata names no JoinService endpoint besides this node")
	}
	return out, nil
}

// Provider is one cloud's answer to the three questions. Endpoints makes it
// a rejoinclient.EndpointSource: it re-reads the metadata on every call (the
// RejoinClient calls it once per round), so a changed control plane is seen
// on the next round.
type Provider interface {
	// Name is the --cloud-provider value.
	Name() string
	// StateDisk is the provider's state disk path (--state-disk overrides).
	StateDisk() string
	// Self reads this node's role and address.
	Self(ctx context.Context) (Self, error)
	// Endpoints reads this round's JoinService endpoints.
	Endpoints(ctx context.Context) ([]string, error)
}

// clip shortens an attacker-chosen value before it goes into an error (and
// so onto the console).
func clip(v string) string {
	const n = 64
	if len(v) > n {
		return v[:n] + "…"
	}
	return v
}

// Clip is clip for the provider packages.
func Clip(v string) string { return clip(v) }
