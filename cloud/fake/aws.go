package fake

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// AWS fakes IMDSv2 with http_tokens=required
// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html):
// PUT /latest/api/token needs X-aws-ec2-metadata-token-ttl-seconds in
// 1–21600 (400 otherwise) and is refused with X-Forwarded-For (403); the
// answer is the token with the TTL header echoed. Every GET needs a valid,
// unexpired token in X-aws-ec2-metadata-token (401 otherwise). Tags are
// served at /latest/meta-data/tags/instance/<key>, the address at
// /latest/meta-data/local-ipv4.
type AWS struct {
	server
	tokens  map[string]time.Time // token → expiry
	issued  int
	expired int // GETs refused for an expired token
}

// StartAWS starts the fake on 127.0.0.1 serving n.
func StartAWS(n Node) (*AWS, error) {
	a := &AWS{tokens: map[string]time.Time{}}
	a.node = n
	return a, a.start(http.HandlerFunc(a.serve))
}

// ExpireTokens makes every token issued so far expired, as if its TTL had
// passed: the next GET with one is answered 401.
func (a *AWS) ExpireTokens() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for t := range a.tokens {
		a.tokens[t] = time.Time{}
	}
}

// TokensIssued is how many tokens the fake handed out.
func (a *AWS) TokensIssued() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.issued
}

// ExpiredTokenRefusals is how many GETs came with an expired token.
func (a *AWS) ExpiredTokenRefusals() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.expired
}

func (a *AWS) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/latest/api/token" {
		a.serveToken(w, r)
		return
	}
	if r.Method != http.MethodGet {
		a.reject(w, http.StatusMethodNotAllowed, "")
		return
	}
	tok := r.Header.Get("X-aws-ec2-metadata-token")
	a.mu.Lock()
	exp, known := a.tokens[tok]
	valid := known && time.Now().Before(exp)
	if known && !valid {
		a.expired++
	}
	a.mu.Unlock()
	if !valid {
		a.reject(w, http.StatusUnauthorized, "")
		return
	}
	n, f := a.snapshot()
	var value string
	found := false
	switch r.URL.Path {
	case "/latest/meta-data/local-ipv4":
		value, found = n.IP, n.IP != ""
	case "/latest/meta-data/tags/instance/disk-mapper-role":
		value, found = n.Role, n.Role != ""
	case "/latest/meta-data/tags/instance/disk-mapper-join-endpoints":
		value, found = n.Endpoints, n.Endpoints != ""
	}
	answer(w, r, f, found, "text/plain", value, "\x00\x01<html>\xff")
}

func (a *AWS) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		a.reject(w, http.StatusMethodNotAllowed, "")
		return
	}
	if r.Header.Get("X-Forwarded-For") != "" {
		a.reject(w, http.StatusForbidden, "")
		return
	}
	ttlText := r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds")
	ttl, err := strconv.Atoi(strings.TrimSpace(ttlText))
	if err != nil || ttl < 1 || ttl > 21600 {
		a.reject(w, http.StatusBadRequest, "")
		return
	}
	_, f := a.snapshot()
	switch f {
	case FaultServerError, FaultGarbage, FaultOversized, FaultSlow:
		// The token endpoint misbehaves like the rest.
		answer(w, r, f, true, "text/plain", "", "\x00\x01<html>\xff")
		return
	}
	b := make([]byte, 28)
	_, _ = rand.Read(b)
	tok := hex.EncodeToString(b)
	a.mu.Lock()
	a.tokens[tok] = time.Now().Add(time.Duration(ttl) * time.Second)
	a.issued++
	a.mu.Unlock()
	w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", strconv.Itoa(ttl))
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(tok))
}
