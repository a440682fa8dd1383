// Package fake holds loopback fakes of the instance metadata services the
// cloud providers read: GCP's metadata server, AWS IMDSv2, Azure IMDS and
// OpenStack's metadata service. Each enforces the real protocol (headers,
// tokens, api-version, status codes), serves one node's provisioning
// contract, and can be switched into the faults a hostile or broken host
// produces (404, 500, garbage, oversized and slow answers, expired tokens).
// They only ever listen on 127.0.0.1; the VM tests reach them through QEMU
// guestfwd.
package fake

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Fault is how a fake misbehaves on every metadata read (after the protocol
// checks, which always apply).
type Fault int

const (
	FaultNone        Fault = iota
	FaultNotFound          // 404 for every key
	FaultServerError       // 500
	FaultGarbage           // 200 with a body that is no valid answer
	FaultOversized         // 200 with a body of OversizedBody bytes
	FaultSlow              // the answer only after SlowDelay (or never, if the client leaves)
	// FaultNoFlavor (GCP) answers without the Metadata-Flavor response
	// header, as something that is not the metadata server would.
	FaultNoFlavor
)

func (f Fault) String() string {
	return [...]string{"none", "404", "500", "garbage", "oversized", "slow", "no-flavor"}[f]
}

// OversizedBody is the size of a FaultOversized answer: far beyond every
// client limit.
const OversizedBody = 1 << 20

// SlowDelay is how long a FaultSlow answer takes: longer than every client
// timeout.
const SlowDelay = 10 * time.Second

// Node is the provisioning contract one fake serves.
type Node struct {
	// Role is the disk-mapper-role value ("" = key not set).
	Role string
	// Endpoints is the disk-mapper-join-endpoints value ("" = not set).
	Endpoints string
	// IP is the node's own VPC address.
	IP string
	// LoadBalancer (Azure) are frontend IP:port pairs forwarding to 30090;
	// empty = the VM is behind no Standard load balancer (404).
	LoadBalancer []string
}

// server is what every fake shares: the listener, the node, the fault and
// the request counters.
type server struct {
	URL string // http://127.0.0.1:PORT
	// Port is the loopback port (for QEMU guestfwd).
	Port int

	srv  *http.Server
	done chan struct{}

	mu       sync.Mutex
	node     Node
	fault    Fault
	reads    int // metadata reads answered (any status)
	rejected int // requests refused for breaking the protocol
}

func (s *server) start(h http.Handler) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s.Port = lis.Addr().(*net.TCPAddr).Port
	s.URL = "http://" + lis.Addr().String()
	s.srv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			panic(err)
		}
	}()
	return nil
}

// Close stops the fake and waits for its handlers (a slow one is cut short).
func (s *server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.done
}

// SetNode replaces the contract served from the next request on.
func (s *server) SetNode(n Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.node = n
}

// SetFault switches the fake's behaviour from the next request on.
func (s *server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

// Reads is how many metadata reads passed the protocol checks.
func (s *server) Reads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// Rejected is how many requests broke the protocol (no header, no token…).
func (s *server) Rejected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejected
}

func (s *server) reject(w http.ResponseWriter, status int, msg string) {
	s.mu.Lock()
	s.rejected++
	s.mu.Unlock()
	http.Error(w, msg, status)
}

// snapshot counts a read and returns the node and fault it sees.
func (s *server) snapshot() (Node, Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	return s.node, s.fault
}

// answer applies fault f, then writes body (404 if !found). garbage is the
// provider's idea of a malformed answer. It reports whether the caller
// should still set its own headers: it writes everything itself.
func answer(w http.ResponseWriter, r *http.Request, f Fault, found bool, contentType, body, garbage string) {
	switch f {
	case FaultNotFound:
		found = false
	case FaultServerError:
		http.Error(w, "internal server error", http.StatusInternalServerError)
		return
	case FaultGarbage:
		body = garbage
	case FaultOversized:
		w.Header().Set("Content-Type", contentType)
		chunk := []byte(strings.Repeat("A", 64<<10))
		for n := 0; n < OversizedBody; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return // the client stopped reading at its limit
			}
		}
		return
	case FaultSlow:
		select {
		case <-time.After(SlowDelay):
		case <-r.Context().Done():
			return
		}
	}
	if !found {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", contentType)
	_, _ = w.Write([]byte(body))
}
