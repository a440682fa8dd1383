package azure

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/cloud/fake"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 300 * time.Millisecond

func start(t *testing.T, n fake.Node) (*fake.Azure, *Client) {
	t.Helper()
	f, err := fake.StartAzure(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	c, err := New(f.URL, 0, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

func TestEndpointsTagsAndLoadBalancer(t *testing.T) {
	for name, tc := range map[string]struct {
		node fake.Node
		want []string
	}{
		"tag and LB":      {fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2", LoadBalancer: []string{"20.1.2.3:30090"}}, []string{"10.0.0.2:30090", "20.1.2.3:30090"}},
		"LB only":         {fake.Node{Role: "worker", IP: "10.0.0.5", LoadBalancer: []string{"20.1.2.3:31000"}}, []string{"20.1.2.3:31000"}},
		"tag only, no LB": {fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2,10.0.0.3"}, []string{"10.0.0.2:30090", "10.0.0.3:30090"}},
		"CP drops itself": {fake.Node{Role: "control-plane", IP: "10.0.0.2", Endpoints: "10.0.0.2,10.0.0.3", LoadBalancer: []string{"20.1.2.3:30090"}}, []string{"10.0.0.3:30090", "20.1.2.3:30090"}},
	} {
		t.Run(name, func(t *testing.T) {
			f, c := start(t, tc.node)
			got, err := c.Endpoints(t.Context())
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("%v, %v; want %v", got, err, tc.want)
			}
			if f.Rejected() != 0 {
				t.Fatalf("the fake rejected %d requests", f.Rejected())
			}
		})
	}
}

func TestReadEveryRound(t *testing.T) {
	f, c := start(t, fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2"})
	if got, _ := c.Endpoints(t.Context()); !slices.Equal(got, []string{"10.0.0.2:30090"}) {
		t.Fatal(got)
	}
	f.SetNode(fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.9"})
	if got, _ := c.Endpoints(t.Context()); !slices.Equal(got, []string{"10.0.0.9:30090"}) {
		t.Fatalf("second round still %v", got)
	}
}

func TestFakeEnforcesProtocol(t *testing.T) {
	f, _ := start(t, fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2"})
	for name, tc := range map[string]struct {
		path string
		hdr  map[string]string
	}{
		"no Metadata header":   {"/metadata/instance?api-version=2021-02-01", nil},
		"Metadata: false":      {"/metadata/instance?api-version=2021-02-01", map[string]string{"Metadata": "false"}},
		"no api-version":       {"/metadata/instance", map[string]string{"Metadata": "true"}},
		"with X-Forwarded-For": {"/metadata/instance?api-version=2021-02-01", map[string]string{"Metadata": "true", "X-Forwarded-For": "1.2.3.4"}},
	} {
		req, _ := http.NewRequest(http.MethodGet, f.URL+tc.path, nil)
		for k, v := range tc.hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: HTTP %d, want 400", name, resp.StatusCode)
		}
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
			f, c := start(t, fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2", LoadBalancer: []string{"20.1.2.3:30090"}})
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
		"no role":         {fake.Node{IP: "10.0.0.5", Endpoints: "10.0.0.2"}, "no disk-mapper-role tag"},
		"no IP":           {fake.Node{Role: "worker", Endpoints: "10.0.0.2"}, "not an IP"},
		"nothing to dial": {fake.Node{Role: "worker", IP: "10.0.0.5"}, "no load balancer endpoint"},
		"bad LB":          {fake.Node{Role: "worker", IP: "10.0.0.5", LoadBalancer: []string{"lb.example:30090"}}, "bad inbound rule"},
	} {
		t.Run(name, func(t *testing.T) {
			_, c := start(t, tc.node)
			if _, err := c.Endpoints(t.Context()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLUNAndDefaults(t *testing.T) {
	c, err := New("", 3, 0)
	if err != nil || c.base != "http://169.254.169.254" || c.StateDisk() != "/dev/disk/azure/scsi1/lun3" || c.Name() != "azure" {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	for _, lun := range []int{-1, 64} {
		if _, err := New("", lun, 0); err == nil {
			t.Errorf("LUN %d accepted", lun)
		}
	}
}
