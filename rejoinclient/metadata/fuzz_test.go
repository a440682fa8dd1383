package metadata

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// bodies answers /self and /peers from memory, so the fuzzer runs the real
// client (status, size limit, JSON decoding, validation) without sockets.
type bodies struct{ self, peers []byte }

func (b bodies) RoundTrip(r *http.Request) (*http.Response, error) {
	body := b.peers
	if r.URL.Path == "/self" {
		body = b.self
	}
	return &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Body: io.NopCloser(bytes.NewReader(body)),
		Header: http.Header{}, Request: r}, nil
}

// FuzzEndpoints fuzzes the metadata API responses. Seeds:
// testdata/fuzz/FuzzEndpoints plus records made here. Invariants: no panic;
// every endpoint returned is IP:30090 of a ControlPlane peer that is not
// this node.
func FuzzEndpoints(f *testing.F) {
	self := `{"name":"w","role":"Worker","vpcIP":"10.0.0.5"}`
	f.Add([]byte(self), []byte(`[`+self+`,{"name":"cp","role":"ControlPlane","vpcIP":"10.0.0.1"}]`))
	f.Add([]byte(self), []byte(`[]`))
	f.Add([]byte(`{"name":"cp","role":"ControlPlane","vpcIP":"fe80::1"}`), []byte(`[{"name":"cp","role":"ControlPlane","vpcIP":"fe80::1"}] x`))
	f.Fuzz(func(t *testing.T, selfBody, peersBody []byte) {
		c, err := New("http://metadata.invalid")
		if err != nil {
			t.Fatal(err)
		}
		c.http.Transport = bodies{self: selfBody, peers: peersBody}
		eps, err := c.Endpoints(context.Background())
		if err != nil {
			return
		}
		me, _ := c.Self(context.Background())
		peers, _ := c.Peers(context.Background())
		if len(eps) == 0 {
			t.Fatal("no error and no endpoints")
		}
		for _, ep := range eps {
			ap, err := netip.ParseAddrPort(ep)
			if err != nil || ap.Port() != constants.JoinServicePort {
				t.Fatalf("endpoint %q is not IP:%d", ep, constants.JoinServicePort)
			}
			found := false
			for _, p := range peers {
				ip, _ := netip.ParseAddr(p.VPCIP)
				found = found || (p.Role == RoleControlPlane && ip == ap.Addr() && p.Name != me.Name)
			}
			if selfIP, _ := netip.ParseAddr(me.VPCIP); !found || ap.Addr() == selfIP {
				t.Fatalf("endpoint %q is not a control-plane peer other than self %+v (peers %s)", ep, me, strconv.Quote(string(peersBody)))
			}
		}
	})
}
