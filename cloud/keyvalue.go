package cloud

import (
	"context"
	"fmt"
)

// KeyValueMetadata is a metadata service that serves each provisioning key
// as its own text value below KeyPath (GCP instance attributes, AWS
// instance tags) and the node's address at IPPath. GCP and AWS differ only
// in how Get talks to the service.
type KeyValueMetadata struct {
	// Name prefixes parse errors ("GCP metadata", "IMDS").
	Name string
	// Get reads one value by path.
	Get func(ctx context.Context, path string) (string, error)
	// KeyPath is the path prefix of the provisioning keys.
	KeyPath string
	// IPPath is the path of the node's private address.
	IPPath string
}

// Self reads the role key and the node's address.
func (m KeyValueMetadata) Self(ctx context.Context) (Self, error) {
	rv, err := m.Get(ctx, m.KeyPath+KeyRole)
	if err != nil {
		return Self{}, err
	}
	role, err := ParseRole(rv)
	if err != nil {
		return Self{}, fmt.Errorf("%s: %w", m.Name, err)
	}
	iv, err := m.Get(ctx, m.IPPath)
	if err != nil {
		return Self{}, err
	}
	ip, err := ParseIP(m.Name+" "+m.IPPath, iv)
	if err != nil {
		return Self{}, err
	}
	return Self{Role: role, IP: ip}, nil
}

// Endpoints reads the keys afresh (no cache: one round, one read) and
// drops a control-plane node itself.
func (m KeyValueMetadata) Endpoints(ctx context.Context) ([]string, error) {
	self, err := m.Self(ctx)
	if err != nil {
		return nil, err
	}
	v, err := m.Get(ctx, m.KeyPath+KeyJoinEndpoints)
	if err != nil {
		return nil, err
	}
	eps, err := ParseEndpoints(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.Name, err)
	}
	return JoinEndpoints(self, eps)
}
