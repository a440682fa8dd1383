package dmctl

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// NormalizeEndpoints turns operator input ("10.0.0.5", "10.0.0.5:9999",
// "[fd00::5]:9999", "fd00::5") into HOST:PORT strings, with defaultPort where
// none is given, dropping duplicates and keeping the order.
func NormalizeEndpoints(in []string, defaultPort int) ([]string, error) {
	if len(in) == 0 {
		return nil, fmt.Errorf("no endpoint given")
	}
	seen := map[string]bool{}
	var out []string
	for _, raw := range in {
		ep, err := normalizeEndpoint(strings.TrimSpace(raw), defaultPort)
		if err != nil {
			return nil, err
		}
		if !seen[ep] {
			seen[ep] = true
			out = append(out, ep)
		}
	}
	return out, nil
}

func normalizeEndpoint(s string, defaultPort int) (string, error) {
	if s == "" {
		return "", fmt.Errorf("empty endpoint")
	}
	// An address without a port; IPv6 may come bracketed or bare.
	bare := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if net.ParseIP(bare) != nil && (s == bare || s == "["+bare+"]") {
		return net.JoinHostPort(bare, strconv.Itoa(defaultPort)), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if !strings.Contains(s, ":") {
			return net.JoinHostPort(s, strconv.Itoa(defaultPort)), nil
		}
		return "", fmt.Errorf("endpoint %q: %w", s, err)
	}
	if host == "" {
		return "", fmt.Errorf("endpoint %q: missing host", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("endpoint %q: port must be 1-65535", s)
	}
	return net.JoinHostPort(host, port), nil
}
