package rejoinclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/spf13/afero"
)

// StaticEndpoints is a fixed list of JoinService endpoints (from a flag or
// the kernel command line). Build it with ParseEndpoints so that every entry
// is a valid IP:PORT.
type StaticEndpoints []string

// Endpoints returns a copy of the list.
func (s StaticEndpoints) Endpoints(context.Context) ([]string, error) {
	if len(s) == 0 {
		return nil, errors.New("static JoinService endpoint list is empty")
	}
	return slices.Clone(s), nil
}

// ParseEndpoints parses a comma-separated list of "IP:PORT" or "IP" entries
// (IPv6 as "[IP]:PORT" or bare "IP"); a missing port means
// constants.JoinServicePort. Only IP addresses are accepted: the initrd has
// no resolver, and a name would silently never work.
func ParseEndpoints(list string) (StaticEndpoints, error) {
	var out StaticEndpoints
	for _, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		ep, err := parseEndpoint(entry)
		if err != nil {
			return nil, err
		}
		out = append(out, ep)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no JoinService endpoints in %q", list)
	}
	return out, nil
}

func parseEndpoint(entry string) (string, error) {
	if ap, err := netip.ParseAddrPort(entry); err == nil {
		if ap.Port() == 0 {
			return "", fmt.Errorf("JoinService endpoint %q: port 0", entry)
		}
		return ap.String(), nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(entry, "["), "]")
	if addr, err := netip.ParseAddr(host); err == nil && addr.Zone() == "" {
		return net.JoinHostPort(addr.String(), strconv.Itoa(constants.JoinServicePort)), nil
	}
	return "", fmt.Errorf("JoinService endpoint %q is not IP, IP:PORT or [IPv6]:PORT", entry)
}

// ErrNoCmdlineEndpoints: the kernel command line does not name JoinService
// endpoints; the caller falls back to another source.
var ErrNoCmdlineEndpoints = errors.New("kernel command line has no " + constants.KernelCmdlineJoinEndpoints)

// EndpointsFromKernelCmdline reads the kernel command line at path (normally
// constants.KernelCmdline) and parses
// disk_mapper.join_endpoints=IP:PORT,IP:PORT. The last occurrence wins, as
// for every kernel parameter. Without the parameter it returns an error
// wrapping ErrNoCmdlineEndpoints.
func EndpointsFromKernelCmdline(fs afero.Fs, path string) (StaticEndpoints, error) {
	raw, err := afero.ReadFile(fs, path)
	if err != nil {
		return nil, fmt.Errorf("reading kernel command line: %w", err)
	}
	value, found := "", false
	for _, field := range strings.Fields(string(raw)) {
		if v, ok := strings.CutPrefix(field, constants.KernelCmdlineJoinEndpoints+"="); ok {
			value, found = strings.Trim(v, `"`), true
		}
	}
	if !found {
		return nil, fmt.Errorf("%s: %w", path, ErrNoCmdlineEndpoints)
	}
	eps, err := ParseEndpoints(value)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", path, constants.KernelCmdlineJoinEndpoints, err)
	}
	return eps, nil
}
