// Package imds is the HTTP plumbing the provider clients share: a client
// that never uses a proxy, never follows a redirect, keeps no idle
// connections and gives up quickly, and a request helper that reads at most a
// bounded body. Instance metadata services are link-local and answer in
// milliseconds; anything slower is broken or hostile, and the RejoinClient
// simply tries again next round.
package imds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultTimeout bounds one metadata request (dial, headers, body). The AWS
// SDK uses 250 ms to dial and 500 ms for the headers against IMDS
// (feature/ec2/imds api_client.go); 2 s leaves room for a loaded TCG guest.
const DefaultTimeout = 2 * time.Second

// NewHTTPClient returns the client every provider uses. Proxy is nil: Azure
// requires IMDS requests to bypass proxies
// (https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service#proxies),
// and a proxy is never right for a link-local service anyway.
func NewHTTPClient(timeout time.Duration) *http.Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            (&net.Dialer{Timeout: timeout}).DialContext,
			DisableKeepAlives:      true,
			ResponseHeaderTimeout:  timeout,
			MaxResponseHeaderBytes: 16 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("metadata redirects are not followed")
		},
	}
}

// ParseBase checks an injectable base URL: http(s)://host[:port], no path
// beyond "/", no query.
func ParseBase(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("metadata base URL %q: %w", base, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("metadata base URL %q: want http(s)://host[:port]", base)
	}
	return strings.TrimSuffix(base, "/"), nil
}

// Response is a bounded metadata answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// ErrTooLarge: the body exceeded the caller's limit.
var ErrTooLarge = errors.New("metadata response too large")

// Do sends req and reads at most limit bytes of the body; a longer body is
// ErrTooLarge whatever the status.
func Do(c *http.Client, req *http.Request, limit int64) (Response, error) {
	resp, err := c.Do(req)
	if err != nil {
		return Response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return Response{}, fmt.Errorf("reading body: %w", err)
	}
	if int64(len(body)) > limit {
		return Response{}, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// NewGet builds a GET for base+path with ctx.
func NewGet(ctx context.Context, base, path string) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
}

// StatusError describes a non-200 answer without echoing more than a few
// bytes of the (attacker-controlled) body.
func StatusError(what string, r Response) error {
	snippet := string(r.Body)
	if len(snippet) > 64 {
		snippet = snippet[:64] + "…"
	}
	return fmt.Errorf("%s: HTTP %d %q", what, r.Status, snippet)
}

// Text checks that a plain-text value is printable ASCII (after trimming
// one trailing newline) and returns it.
func Text(what string, b []byte) (string, error) {
	s := strings.TrimSuffix(string(b), "\n")
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return "", fmt.Errorf("%s: not printable ASCII", what)
		}
	}
	return s, nil
}
