package aws

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/cloud/fake"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 300 * time.Millisecond

func start(t *testing.T, n fake.Node) (*fake.AWS, *Client) {
	t.Helper()
	f, err := fake.StartAWS(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	c, err := New(f.URL, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

var worker = fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2,[fd00::3]:30091"}

func TestEndpointsOneTokenManyRounds(t *testing.T) {
	f, c := start(t, worker)
	for range 3 {
		got, err := c.Endpoints(t.Context())
		if err != nil || !slices.Equal(got, []string{"10.0.0.2:30090", "[fd00::3]:30091"}) {
			t.Fatalf("%v, %v", got, err)
		}
	}
	if f.TokensIssued() != 1 || f.Rejected() != 0 {
		t.Fatalf("tokens %d, rejected %d: want one token reused, no refusal", f.TokensIssued(), f.Rejected())
	}
	f.SetNode(fake.Node{Role: "control-plane", IP: "10.0.0.2", Endpoints: "10.0.0.2,10.0.0.4"})
	if got, err := c.Endpoints(t.Context()); err != nil || !slices.Equal(got, []string{"10.0.0.4:30090"}) {
		t.Fatalf("control plane: %v, %v", got, err)
	}
}

// A token IMDS no longer accepts (401) is replaced at once, within the same
// round.
func TestExpiredTokenIsReplacedOn401(t *testing.T) {
	f, c := start(t, worker)
	if _, err := c.Endpoints(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.ExpireTokens()
	if _, err := c.Endpoints(t.Context()); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if f.TokensIssued() != 2 || f.ExpiredTokenRefusals() != 1 {
		t.Fatalf("tokens %d, expired refusals %d; want 2 and 1", f.TokensIssued(), f.ExpiredTokenRefusals())
	}
}

// A token near its TTL is renewed before use, without a 401 first.
func TestTokenRenewedBeforeExpiry(t *testing.T) {
	f, c := start(t, worker)
	now := time.Now()
	c.now = func() time.Time { return now }
	if _, err := c.Endpoints(t.Context()); err != nil {
		t.Fatal(err)
	}
	now = now.Add(TokenTTL - tokenMargin + time.Second)
	if _, err := c.Endpoints(t.Context()); err != nil {
		t.Fatal(err)
	}
	if f.TokensIssued() != 2 || f.Rejected() != 0 {
		t.Fatalf("tokens %d, rejected %d", f.TokensIssued(), f.Rejected())
	}
}

func TestFakeEnforcesIMDSv2(t *testing.T) {
	f, _ := start(t, worker)
	do := func(method, path string, hdr map[string]string) int {
		req, _ := http.NewRequest(method, f.URL+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tag := "/latest/meta-data/tags/instance/disk-mapper-role"
	for name, tc := range map[string]struct {
		method, path string
		hdr          map[string]string
		want         int
	}{
		"GET without token (IMDSv1)": {"GET", tag, nil, 401},
		"GET with a made-up token":   {"GET", tag, map[string]string{"X-aws-ec2-metadata-token": "forged"}, 401},
		"PUT without TTL":            {"PUT", "/latest/api/token", nil, 400},
		"PUT with TTL 0":             {"PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "0"}, 400},
		"PUT with TTL over 6 h":      {"PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "21601"}, 400},
		"PUT with X-Forwarded-For":   {"PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "1.2.3.4"}, 403},
		"GET on the token path":      {"GET", "/latest/api/token", nil, 405},
	} {
		if got := do(tc.method, tc.path, tc.hdr); got != tc.want {
			t.Errorf("%s: HTTP %d, want %d", name, got, tc.want)
		}
	}
}

func TestFaults(t *testing.T) {
	for _, tc := range []struct {
		fault fake.Fault
		want  string
	}{
		{fake.FaultNotFound, "not set (HTTP 404"},
		{fake.FaultServerError, "HTTP 500"},
		{fake.FaultGarbage, "not printable"},
		{fake.FaultOversized, "too large"},
		{fake.FaultSlow, "Timeout"},
	} {
		t.Run(tc.fault.String(), func(t *testing.T) {
			f, c := start(t, worker)
			f.SetFault(tc.fault)
			begin := time.Now()
			_, err := c.Endpoints(t.Context())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if d := time.Since(begin); d > 3*testTimeout {
				t.Errorf("took %v with a %v timeout", d, testTimeout)
			}
			f.SetFault(fake.FaultNone)
			if _, err := c.Endpoints(t.Context()); err != nil {
				t.Fatalf("after the fault: %v", err)
			}
		})
	}
}

// No downgrade to tokenless IMDSv1, and no token without the echoed TTL.
func TestTokenRefusals(t *testing.T) {
	for name, h := range map[string]http.HandlerFunc{
		"PUT refused (IMDSv1-only host)": func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut {
				w.WriteHeader(http.StatusForbidden)
				return
			}
			w.Write([]byte("worker")) // a tokenless GET must never be tried
			t.Errorf("tokenless %s %s", r.Method, r.URL.Path)
		},
		"no TTL echoed": func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("token"))
		},
		"TTL longer than asked": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(ttlHeader, "999999")
			w.Write([]byte("token"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(h)
			defer srv.Close()
			c, err := New(srv.URL, testTimeout)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Endpoints(t.Context()); err == nil || !strings.Contains(err.Error(), "IMDS token") {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c, err := New("", 0)
	if err != nil || c.base != "http://169.254.169.254" || c.StateDisk() != "/dev/sdb" || c.Name() != "aws" {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
}
