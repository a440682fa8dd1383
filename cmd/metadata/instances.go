package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"

	"github.com/spf13/afero"
)

// Instance is one record of the metadata API, as the node's metadata client
// reads it.
type Instance struct {
	Name  string `json:"name"`
	Role  string `json:"role"` // ControlPlane or Worker
	VPCIP string `json:"vpcIP"`
}

// Roles a record may carry.
const (
	RoleControlPlane = "ControlPlane"
	RoleWorker       = "Worker"
)

// parseInstanceFlag reads "name,role,vpcIP".
func parseInstanceFlag(v string) (Instance, error) {
	parts := strings.Split(v, ",")
	if len(parts) != 3 {
		return Instance{}, fmt.Errorf("--instance %q: want NAME,ROLE,VPC_IP", v)
	}
	return Instance{Name: strings.TrimSpace(parts[0]), Role: strings.TrimSpace(parts[1]), VPCIP: strings.TrimSpace(parts[2])}, nil
}

// loadInstances reads a JSON array of records.
func loadInstances(fs afero.Fs, path string) ([]Instance, error) {
	raw, err := afero.ReadFile(fs, path)
	if err != nil {
		return nil, fmt.Errorf("reading instances: %w", err)
	}
	var out []Instance
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		return nil, fmt.Errorf("parsing instances %s (want a JSON array of {\"name\",\"role\",\"vpcIP\"}): %w", path, err)
	}
	return out, nil
}

// validateInstances rejects records a node could not use.
func validateInstances(instances []Instance) error {
	if len(instances) == 0 {
		return fmt.Errorf("no instances configured (use --instances FILE or --instance NAME,ROLE,VPC_IP)")
	}
	seen := map[string]bool{}
	for _, in := range instances {
		switch {
		case in.Name == "":
			return fmt.Errorf("instance with empty name")
		case seen[in.Name]:
			return fmt.Errorf("instance %q listed twice", in.Name)
		case in.Role != RoleControlPlane && in.Role != RoleWorker:
			return fmt.Errorf("instance %q: role %q is not %s or %s", in.Name, in.Role, RoleControlPlane, RoleWorker)
		case net.ParseIP(in.VPCIP) == nil:
			return fmt.Errorf("instance %q: vpcIP %q is not an IP address", in.Name, in.VPCIP)
		}
		seen[in.Name] = true
	}
	return nil
}
