package openstack

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/cloud/fake"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 300 * time.Millisecond

func start(t *testing.T, n fake.Node) (*fake.OpenStack, *Client) {
	t.Helper()
	f, err := fake.StartOpenStack(n)
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

func TestEndpoints(t *testing.T) {
	f, c := start(t, fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2,10.0.0.3"})
	if got, err := c.Endpoints(t.Context()); err != nil || !slices.Equal(got, []string{"10.0.0.2:30090", "10.0.0.3:30090"}) {
		t.Fatalf("%v, %v", got, err)
	}
	f.SetNode(fake.Node{Role: "control-plane", IP: "10.0.0.3", Endpoints: "10.0.0.2,10.0.0.3"})
	if got, err := c.Endpoints(t.Context()); err != nil || !slices.Equal(got, []string{"10.0.0.2:30090"}) {
		t.Fatalf("control plane (re-read): %v, %v", got, err)
	}
}

func TestFaults(t *testing.T) {
	for _, tc := range []struct {
		fault fake.Fault
		want  string
	}{
		{fake.FaultNotFound, "HTTP 404"},
		{fake.FaultServerError, "HTTP 500"},
		{fake.FaultGarbage, "invalid JSON"},
		{fake.FaultOversized, "too large"},
		{fake.FaultSlow, "Timeout"},
	} {
		t.Run(tc.fault.String(), func(t *testing.T) {
			f, c := start(t, fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2"})
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

func TestContractErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		node fake.Node
		want string
	}{
		"no role":      {fake.Node{IP: "10.0.0.5", Endpoints: "10.0.0.2"}, "no meta disk-mapper-role"},
		"no endpoints": {fake.Node{Role: "worker", IP: "10.0.0.5"}, "no meta disk-mapper-join-endpoints"},
		"no IP":        {fake.Node{Role: "worker", Endpoints: "10.0.0.2"}, "HTTP 404"},
		"bad role":     {fake.Node{Role: "master", IP: "10.0.0.5", Endpoints: "10.0.0.2"}, "neither"},
	} {
		t.Run(name, func(t *testing.T) {
			_, c := start(t, tc.node)
			if _, err := c.Endpoints(t.Context()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c, err := New("", 0)
	if err != nil || c.base != "http://169.254.169.254" || c.StateDisk() != "/dev/vdb" || c.Name() != "openstack" {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
}
