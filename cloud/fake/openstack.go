package fake

import (
	"encoding/json"
	"net/http"
)

// OpenStack fakes Nova's metadata service
// (https://docs.openstack.org/nova/latest/user/metadata.html): no headers,
// GET /openstack/<version>/meta_data.json with the server's metadata in
// "meta", and the EC2-compatible /latest/meta-data/local-ipv4; 404 for
// anything else.
type OpenStack struct{ server }

// StartOpenStack starts the fake on 127.0.0.1 serving n.
func StartOpenStack(n Node) (*OpenStack, error) {
	o := &OpenStack{}
	o.node = n
	return o, o.start(http.HandlerFunc(o.serve))
}

func (o *OpenStack) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		o.reject(w, http.StatusMethodNotAllowed, "")
		return
	}
	n, f := o.snapshot()
	switch r.URL.Path {
	case "/openstack/2018-08-27/meta_data.json", "/openstack/latest/meta_data.json":
		meta := map[string]string{"constellation-uid": "ignored"}
		if n.Role != "" {
			meta["disk-mapper-role"] = n.Role
		}
		if n.Endpoints != "" {
			meta["disk-mapper-join-endpoints"] = n.Endpoints
		}
		body, _ := json.Marshal(map[string]any{
			"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "name": "node", "project_id": "p",
			"availability_zone": "nova", "meta": meta,
		})
		answer(w, r, f, true, "application/json", string(body), `{"meta":{"disk-mapper-role":`)
	case "/latest/meta-data/local-ipv4":
		answer(w, r, f, n.IP != "", "text/plain; charset=UTF-8", n.IP, "\x00\x01<html>\xff")
	default:
		answer(w, r, f, false, "text/plain", "", "")
	}
}
