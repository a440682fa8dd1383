package imds

import (
	"net/http"
	"testing"
)

// Azure requires IMDS requests to bypass proxies; on loopback Go's
// ProxyFromEnvironment would skip the proxy anyway, so the guarantee is
// checked on the transport itself.
func TestNoProxyNoRedirect(t *testing.T) {
	c := NewHTTPClient(0)
	tr := c.Transport.(*http.Transport)
	if tr.Proxy != nil || !tr.DisableKeepAlives || c.Timeout != DefaultTimeout {
		t.Fatalf("transport: proxy set %v, keep-alives %v, timeout %v", tr.Proxy != nil, !tr.DisableKeepAlives, c.Timeout)
	}
	if c.CheckRedirect(nil, nil) == nil {
		t.Fatal("redirects followed")
	}
}
