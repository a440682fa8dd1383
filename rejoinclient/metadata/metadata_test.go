package metadata

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// apiServer serves fixed bodies for /self and /peers on 127.0.0.1.
func apiServer(t *testing.T, self, peers string) *Client {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /self", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(self)) })
	mux.HandleFunc("GET /peers", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(peers)) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c, err := New(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const cluster = `[
 {"name":"cp-0","role":"ControlPlane","vpcIP":"10.0.2.100","zone":"ignored"},
 {"name":"cp-1","role":"ControlPlane","vpcIP":"10.0.2.101"},
 {"name":"worker-0","role":"Worker","vpcIP":"10.0.2.200"},
 {"name":"cp-2","role":"ControlPlane","vpcIP":"fd00::102"}
]`

func TestEndpointsWorkerGetsAllControlPlanes(t *testing.T) {
	c := apiServer(t, `{"name":"worker-0","role":"Worker","vpcIP":"10.0.2.200"}`, cluster)
	got, err := c.Endpoints(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.2.100:30090", "10.0.2.101:30090", "[fd00::102]:30090"}; !slices.Equal(got, want) {
		t.Errorf("endpoints = %v, want %v", got, want)
	}
	self, err := c.Self(t.Context())
	if err != nil || self != (Instance{Name: "worker-0", Role: RoleWorker, VPCIP: "10.0.2.200"}) {
		t.Errorf("Self = %+v, %v", self, err)
	}
}

func TestEndpointsControlPlaneRemovesItself(t *testing.T) {
	c := apiServer(t, `{"name":"cp-1","role":"ControlPlane","vpcIP":"10.0.2.101"}`, cluster)
	got, err := c.Endpoints(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.2.100:30090", "[fd00::102]:30090"}; !slices.Equal(got, want) {
		t.Errorf("endpoints = %v, want %v", got, want)
	}
}

func TestEndpointsErrors(t *testing.T) {
	worker := `{"name":"worker-0","role":"Worker","vpcIP":"10.0.2.200"}`
	for name, tc := range map[string]struct{ self, peers, wantErr string }{
		"garbage peers":        {worker, `[{"name":"cp-0",`, "invalid JSON"},
		"garbage self":         {`<html>`, cluster, "invalid JSON"},
		"trailing data":        {worker, cluster + `]`, "trailing data"},
		"two values":           {worker, cluster + cluster, "trailing data"},
		"empty list":           {worker, `[]`, "empty list"},
		"null list":            {worker, `null`, "empty list"},
		"object not list":      {worker, `{"name":"cp-0"}`, "invalid JSON"},
		"bad role":             {worker, `[{"name":"cp-0","role":"controlplane","vpcIP":"10.0.2.100"}]`, "role"},
		"bad IP":               {worker, `[{"name":"cp-0","role":"ControlPlane","vpcIP":"10.0.2.100:30090"}]`, "vpcIP"},
		"no name":              {worker, `[{"role":"ControlPlane","vpcIP":"10.0.2.100"}]`, "without name"},
		"self incomplete":      {`{}`, cluster, "without name"},
		"only self":            {`{"name":"cp-0","role":"ControlPlane","vpcIP":"10.0.2.100"}`, `[{"name":"cp-0","role":"ControlPlane","vpcIP":"10.0.2.100"}]`, "no control-plane node besides"},
		"workers only":         {worker, `[{"name":"w","role":"Worker","vpcIP":"10.0.2.201"}]`, "no control-plane node besides"},
		"oversized":            {worker, `[` + strings.Repeat(`{"name":"cp-0","role":"ControlPlane","vpcIP":"10.0.2.100"},`, MaxResponseSize/50) + `]`, "larger than"},
		"self same IP as peer": {`{"name":"renamed","role":"ControlPlane","vpcIP":"10.0.2.100"}`, `[{"name":"cp-0","role":"ControlPlane","vpcIP":"10.0.2.100"}]`, "no control-plane node besides"},
	} {
		t.Run(name, func(t *testing.T) {
			c := apiServer(t, tc.self, tc.peers)
			got, err := c.Endpoints(t.Context())
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Endpoints = %v, %v; want error containing %q", got, err, tc.wantErr)
			}
		})
	}
}

func TestHTTPErrorStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Endpoints(t.Context()); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("err = %v, want the HTTP status", err)
	}
}

func TestContextBoundsRequest(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Self(ctx); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("err = %v, want deadline exceeded", err)
	}
}

func TestNewRejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "10.0.2.2:8080", "ftp://10.0.2.2/", "http://", "://x"} {
		if _, err := New(u); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}
