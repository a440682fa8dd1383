package fake

import (
	"encoding/json"
	"net"
	"net/http"
	"strconv"
)

// Azure fakes IMDS (https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service):
// every request needs the header Metadata: true and an api-version query
// parameter (400 otherwise, with IMDS's JSON error), and a request with
// X-Forwarded-For is refused (400; IMDS rejects proxied requests). It serves
// /metadata/instance (compute.tagsList, network.interface[0]) and
// /metadata/loadbalancer (inboundRules; 404 when the node has no load
// balancer).
type Azure struct{ server }

// StartAzure starts the fake on 127.0.0.1 serving n.
func StartAzure(n Node) (*Azure, error) {
	a := &Azure{}
	a.node = n
	return a, a.start(http.HandlerFunc(a.serve))
}

func (a *Azure) serve(w http.ResponseWriter, r *http.Request) {
	fail := func(msg string) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		a.reject(w, http.StatusBadRequest, `{"error":"`+msg+`"}`)
	}
	switch {
	case r.Method != http.MethodGet:
		fail("Bad request. Method not allowed")
		return
	case r.Header.Get("Metadata") != "true":
		fail("Bad request. Required metadata header not specified")
		return
	case r.Header.Get("X-Forwarded-For") != "":
		fail("Bad request. Request contains X-Forwarded-For header")
		return
	case r.URL.Query().Get("api-version") == "":
		fail("Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds")
		return
	}
	n, f := a.snapshot()
	var doc any
	found := true
	switch r.URL.Path {
	case "/metadata/instance":
		tags := []map[string]string{{"name": "constellation-uid", "value": "ignored"}}
		if n.Role != "" {
			tags = append(tags, map[string]string{"name": "disk-mapper-role", "value": n.Role})
		}
		if n.Endpoints != "" {
			tags = append(tags, map[string]string{"name": "disk-mapper-join-endpoints", "value": n.Endpoints})
		}
		doc = map[string]any{
			"compute": map[string]any{"name": "node", "tagsList": tags},
			"network": map[string]any{"interface": []any{map[string]any{
				"ipv4": map[string]any{"ipAddress": []any{map[string]any{"privateIpAddress": n.IP, "publicIpAddress": ""}}},
			}}},
		}
	case "/metadata/loadbalancer":
		var rules []any
		for _, fe := range n.LoadBalancer {
			host, port, _ := net.SplitHostPort(fe)
			p, _ := strconv.Atoi(port)
			rules = append(rules, map[string]any{"frontendIpAddress": host, "protocol": "tcp",
				"frontendPort": p, "backendPort": 30090, "privateIpAddress": n.IP})
		}
		found = len(rules) > 0
		doc = map[string]any{"loadbalancer": map[string]any{"publicIpAddresses": []any{}, "inboundRules": rules, "outboundRules": []any{}}}
	default:
		found = false
	}
	body, _ := json.Marshal(doc)
	answer(w, r, f, found, "application/json; charset=utf-8", string(body), `{"compute":{"tagsList":[{"name":`)
}
