package fake

import (
	"net/http"
	"strings"
)

// GCP fakes the Compute Engine metadata server
// (https://cloud.google.com/compute/docs/metadata/querying-metadata):
// every request needs Metadata-Flavor: Google (403 otherwise), a request with
// X-Forwarded-For is refused (403; the server rejects proxied requests), and
// every answer carries Metadata-Flavor: Google. Custom attributes live under
// /computeMetadata/v1/instance/attributes/<key>.
type GCP struct{ server }

// StartGCP starts the fake on 127.0.0.1 serving n.
func StartGCP(n Node) (*GCP, error) {
	g := &GCP{}
	g.node = n
	return g, g.start(http.HandlerFunc(g.serve))
}

func (g *GCP) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		g.reject(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if r.Header.Get("Metadata-Flavor") != "Google" {
		w.Header().Set("Metadata-Flavor", "Google")
		g.reject(w, http.StatusForbidden, "Missing Metadata-Flavor:Google header.")
		return
	}
	if r.Header.Get("X-Forwarded-For") != "" {
		w.Header().Set("Metadata-Flavor", "Google")
		g.reject(w, http.StatusForbidden, "Request had X-Forwarded-For header and was rejected.")
		return
	}
	n, f := g.snapshot()
	if f != FaultNoFlavor {
		w.Header().Set("Metadata-Flavor", "Google")
	}
	var value string
	found := false
	switch p := r.URL.Path; {
	case p == "/computeMetadata/v1/instance/network-interfaces/0/ip":
		value, found = n.IP, n.IP != ""
	case strings.HasPrefix(p, "/computeMetadata/v1/instance/attributes/"):
		switch strings.TrimPrefix(p, "/computeMetadata/v1/instance/attributes/") {
		case "disk-mapper-role":
			value, found = n.Role, n.Role != ""
		case "disk-mapper-join-endpoints":
			value, found = n.Endpoints, n.Endpoints != ""
		}
	}
	answer(w, r, f, found, "application/text", value, "\x00\x01<html>\xff")
}
