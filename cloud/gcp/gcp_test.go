package gcp

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/cloud"
	"github.com/diskmapper/disk-mapper/cloud/fake"
	"github.com/diskmapper/disk-mapper/cloud/internal/imds"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 300 * time.Millisecond

func start(t *testing.T, n fake.Node) (*fake.GCP, *Client) {
	t.Helper()
	f, err := fake.StartGCP(n)
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

func TestEndpointsByRoleAndEveryRound(t *testing.T) {
	f, c := start(t, fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2,10.0.0.3:30091"})
	got, err := c.Endpoints(t.Context())
	if err != nil || !slices.Equal(got, []string{"10.0.0.2:30090", "10.0.0.3:30091"}) {
		t.Fatalf("worker: %v, %v", got, err)
	}
	// A control-plane node drops itself; and the next call sees the change
	// (no cache between rounds).
	f.SetNode(fake.Node{Role: "control-plane", IP: "10.0.0.2", Endpoints: "10.0.0.2,10.0.0.4"})
	got, err = c.Endpoints(t.Context())
	if err != nil || !slices.Equal(got, []string{"10.0.0.4:30090"}) {
		t.Fatalf("control plane: %v, %v", got, err)
	}
	if self, err := c.Self(t.Context()); err != nil || self.Role != cloud.RoleControlPlane || self.IP.String() != "10.0.0.2" {
		t.Fatalf("Self = %+v, %v", self, err)
	}
	if f.Rejected() != 0 {
		t.Fatalf("the fake rejected %d of the client's requests", f.Rejected())
	}
}

// The fake enforces the protocol: the header is required, and proxied
// requests are refused. The client never trips either (above).
func TestFakeEnforcesHeader(t *testing.T) {
	f, _ := start(t, fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2"})
	for name, hdr := range map[string]map[string]string{
		"no header":       nil,
		"wrong flavor":    {"Metadata-Flavor": "Amazon"},
		"X-Forwarded-For": {"Metadata-Flavor": "Google", "X-Forwarded-For": "10.1.1.1"},
	} {
		req, _ := http.NewRequest(http.MethodGet, f.URL+"/computeMetadata/v1/instance/attributes/disk-mapper-role", nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: HTTP %d, want 403", name, resp.StatusCode)
		}
	}
	if f.Rejected() != 3 {
		t.Errorf("rejected %d, want 3", f.Rejected())
	}
}

func TestFaults(t *testing.T) {
	for _, tc := range []struct {
		fault fake.Fault
		want  string
	}{
		{fake.FaultNotFound, "not set (HTTP 404)"},
		{fake.FaultServerError, "HTTP 500"},
		{fake.FaultGarbage, "not printable"},
		{fake.FaultOversized, "too large"},
		{fake.FaultSlow, "Timeout"},
		{fake.FaultNoFlavor, "without Metadata-Flavor"},
	} {
		t.Run(tc.fault.String(), func(t *testing.T) {
			f, c := start(t, fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2"})
			f.SetFault(tc.fault)
			begin := time.Now()
			_, err := c.Endpoints(t.Context())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if tc.fault == fake.FaultOversized && !errors.Is(err, imds.ErrTooLarge) {
				t.Errorf("not ErrTooLarge: %v", err)
			}
			if d := time.Since(begin); d > 3*testTimeout {
				t.Errorf("took %v with a %v timeout", d, testTimeout)
			}
			// The fault goes away: the next round works.
			f.SetFault(fake.FaultNone)
			if _, err := c.Endpoints(t.Context()); err != nil {
				t.Fatalf("after the fault: %v", err)
			}
		})
	}
}

func TestContractErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		node fake.Node
		want string
	}{
		"no role":        {fake.Node{IP: "10.0.0.5", Endpoints: "10.0.0.2"}, "disk-mapper-role: not set"},
		"bad role":       {fake.Node{Role: "ControlPlane", IP: "10.0.0.5", Endpoints: "10.0.0.2"}, "neither"},
		"no endpoints":   {fake.Node{Role: "worker", IP: "10.0.0.5"}, "disk-mapper-join-endpoints: not set"},
		"name endpoint":  {fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "lb.example.com:30090"}, "not IP"},
		"bad own IP":     {fake.Node{Role: "worker", IP: "10.0.0.5/24", Endpoints: "10.0.0.2"}, "not an IP"},
		"only itself":    {fake.Node{Role: "control-plane", IP: "10.0.0.2", Endpoints: "10.0.0.2:30090"}, "besides this node"},
		"too many":       {fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: strings.Repeat("10.0.0.1:1,", 65)}, "more than 64"},
		"control in IP":  {fake.Node{Role: "worker", IP: "10.0.0.5\r\nX: y", Endpoints: "10.0.0.2"}, "not printable"},
		"trailing space": {fake.Node{Role: "worker ", IP: "10.0.0.5", Endpoints: "10.0.0.2"}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, c := start(t, tc.node)
			_, err := c.Endpoints(t.Context())
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c, err := New("", 0)
	if err != nil || c.base != "http://169.254.169.254" || c.StateDisk() != "/dev/disk/by-id/google-state-disk" || c.Name() != "gcp" {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	for _, bad := range []string{"169.254.169.254", "ftp://x", "http://x/path", "http://x?q=1", "http://u:p@x"} {
		if _, err := New(bad, 0); err == nil {
			t.Errorf("base %q accepted", bad)
		}
	}
}
