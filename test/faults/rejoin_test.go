package faults

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/internal/unlock"
	join "github.com/diskmapper/disk-mapper/joinproto"
	"github.com/diskmapper/disk-mapper/rejoinclient"
	"github.com/diskmapper/disk-mapper/rejoinclient/metadata"
	"github.com/diskmapper/disk-mapper/setup"
)

// JoinService faults seen by the RejoinClient (issue item 4): the real
// RejoinClient with aTLS (dev issuer, JoinService pinned by a CA) against
// real gRPC/aTLS servers and raw misbehaving listeners on 127.0.0.1, raced by
// setup.Race whose test is libcryptsetup's keyslot check on a real disk.

// pki is the cluster CA and the JoinService's certificate.
type pki struct {
	pool   *x509.CertPool
	server tls.Certificate
	rogue  tls.Certificate // self-signed, not from the CA
}

func newPKI(t *testing.T) pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "faults CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(parent *x509.Certificate, signer *ecdsa.PrivateKey) tls.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "joinservice"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if parent == nil {
			parent, signer = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pki{pool: pool, server: leaf(ca, caKey), rogue: leaf(nil, nil)}
}

func (p pki) serverCreds(t *testing.T, cert tls.Certificate) credentials.TransportCredentials {
	log, _ := newLog(t, "joinservice")
	return atls.NewCredentials(atls.Config{Validator: attestation.NewDevValidator(log), Certificate: &cert, Log: log})
}

// joinServer serves tickets from issue on a loopback port until the test ends.
type joinServer struct {
	join.UnimplementedAPIServer
	issue func() (*join.IssueRejoinTicketResponse, error)
	calls atomic.Int32
}

func (s *joinServer) IssueRejoinTicket(context.Context, *join.IssueRejoinTicketRequest) (*join.IssueRejoinTicketResponse, error) {
	s.calls.Add(1)
	return s.issue()
}

func serveJoin(t *testing.T, lis net.Listener, creds credentials.TransportCredentials, issue func() (*join.IssueRejoinTicketResponse, error)) string {
	t.Helper()
	srv := grpc.NewServer(grpc.Creds(creds))
	join.RegisterAPIServer(srv, &joinServer{issue: issue})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

func ticketFor(key []byte) func() (*join.IssueRejoinTicketResponse, error) {
	return func() (*join.IssueRejoinTicketResponse, error) {
		return &join.IssueRejoinTicketResponse{StateDiskKey: clone(key), MeasurementSecret: randomKey(nil), MeasurementSalt: randomKey(nil)}, nil
	}
}

// rawServer runs behave on every accepted connection until the test ends.
func rawServer(t *testing.T, behave func(net.Conn)) string {
	t.Helper()
	lis := listen(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { behave(c) })
		}
	})
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return lis.Addr().String()
}

// drain reads and discards until the connection is closed: a peer that
// never answers.
func drain(c net.Conn) {
	buf := make([]byte, 1<<12)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

func closedPort(t *testing.T) string {
	lis := listen(t)
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// rounds is an EndpointSource that answers round i with lists[i] (the last
// list repeats); before, if set, runs at the start of a round.
type rounds struct {
	mu     sync.Mutex
	n      int
	lists  [][]string
	before func(round int)
}

func (r *rounds) Endpoints(context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	if r.before != nil {
		r.before(r.n)
	}
	return r.lists[min(r.n, len(r.lists))-1], nil
}

type rejoinRun struct {
	disk ourDisk
	logs *logSink
	res  setup.RaceResult
	err  error
}

// runRejoin races a real RejoinClient against the disk's keyslots.
func runRejoin(t *testing.T, disk ourDisk, p pki, src rejoinclient.EndpointSource, within time.Duration) rejoinRun {
	t.Helper()
	dev, err := diskencryption.Open(disk.path)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	log, logs := newLog(t, constants.LoggerRejoinClient)
	client := rejoinclient.New(rejoinclient.Config{
		DiskUUID:       disk.uuid,
		Endpoints:      src,
		Credentials:    atls.NewCredentials(atls.Config{Issuer: attestation.NewDevIssuer(log), RootCAs: p.pool, Log: log}),
		Log:            log,
		AttemptTimeout: 400 * time.Millisecond,
		BackoffBase:    20 * time.Millisecond,
		BackoffCap:     100 * time.Millisecond,
		KeepOrder:      true,
	})
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	test := func(k unlock.Key) error { return dev.CheckKey(k.DiskKey) }
	res, err := setup.Race(ctx, log, test, client)
	return rejoinRun{disk: disk, logs: logs, res: res, err: err}
}

// failures returns how many attempts on endpoint were requested and how
// many failures were logged for it, and the classes logged.
func failures(logs *logSink, endpoint string) (requested, failed int, classes []string) {
	ep := `"endpoint":"` + endpoint + `"`
	requested = logs.count("Requesting rejoin ticket", ep)
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "Failed to rejoin on endpoint") && strings.Contains(line, ep) {
			failed++
			if i := strings.Index(line, `"errorClass":"`); i >= 0 {
				rest := line[i+len(`"errorClass":"`):]
				classes = append(classes, rest[:strings.Index(rest, `"`)])
			}
		}
	}
	return requested, failed, classes
}

func TestRejoinFaults(t *testing.T) {
	p := newPKI(t)
	type fault struct {
		name  string
		class string
		start func(t *testing.T) string // the faulty endpoint
	}
	faults := []fault{
		{"blackhole (accepts, never answers)", "timeout", func(t *testing.T) string {
			return rawServer(t, drain)
		}},
		{"closed port", "refused", closedPort},
		{"connection reset mid-RPC (after aTLS)", "unavailable", func(t *testing.T) string {
			creds := p.serverCreds(t, p.server)
			return rawServer(t, func(c net.Conn) {
				conn, _, err := creds.ServerHandshake(c)
				if err != nil {
					return
				}
				_, _ = conn.Read(make([]byte, 64)) // the HTTP/2 preface: the RPC has begun
				c.(*net.TCPConn).SetLinger(0)
				c.Close() // RST
			})
		}},
		{"slow-drip server (1 byte / 100 ms)", "timeout", func(t *testing.T) string {
			return rawServer(t, func(c net.Conn) {
				for _, b := range []byte{0x16, 0x03, 0x03, 0x40, 0x00} {
					if _, err := c.Write([]byte{b}); err != nil {
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
				drain(c)
			})
		}},
		{"garbage bytes instead of TLS", "tls_handshake", func(t *testing.T) string {
			junk := testutil.RandomBytes(t, 1024)
			return rawServer(t, func(c net.Conn) { c.Write(junk); c.Close() })
		}},
		{"certificate not from the cluster CA", "tls_handshake", func(t *testing.T) string {
			return serveJoin(t, listen(t), p.serverCreds(t, p.rogue), ticketFor(randomKey(t)))
		}},
		{"wrong key in the ticket", "wrong_key", func(t *testing.T) string {
			return serveJoin(t, listen(t), p.serverCreds(t, p.server), ticketFor(randomKey(t)))
		}},
		{"ticket without a key", "malformed", func(t *testing.T) string {
			return serveJoin(t, listen(t), p.serverCreds(t, p.server), func() (*join.IssueRejoinTicketResponse, error) {
				return &join.IssueRejoinTicketResponse{}, nil
			})
		}},
		{"error status PermissionDenied", "permission_denied", func(t *testing.T) string {
			return serveJoin(t, listen(t), p.serverCreds(t, p.server), func() (*join.IssueRejoinTicketResponse, error) {
				return nil, status.Error(codes.PermissionDenied, "measurements do not match")
			})
		}},
		{"error status Internal", "internal", func(t *testing.T) string {
			return serveJoin(t, listen(t), p.serverCreds(t, p.server), func() (*join.IssueRejoinTicketResponse, error) {
				return nil, status.Error(codes.Internal, "boom")
			})
		}},
	}
	for _, f := range faults {
		t.Run(strings.ReplaceAll(f.name, " ", "_"), func(t *testing.T) {
			disk := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
			before := readAll(t, disk.path)
			bad := f.start(t)
			good := serveJoin(t, listen(t), p.serverCreds(t, p.server), ticketFor(disk.key))
			// Round 1 only the faulty endpoint (its failure must be logged,
			// classified); from round 2 the faulty one first, then a healthy one.
			run := runRejoin(t, disk, p, &rounds{lists: [][]string{{bad}, {bad, good}}}, 10*time.Second)
			requested, failed, classes := failures(run.logs, bad)
			classOK := len(classes) == failed
			for _, c := range classes {
				classOK = classOK && c == f.class
			}
			won := run.err == nil && bytes.Equal(run.res.Key.DiskKey, disk.key)
			run.res.Key.Zero()
			got := fmt.Sprintf("key %v; faulty endpoint: %d attempts, %d failures logged, classes %v", won, requested, failed, classes)
			record(t, outcome{Case: "rejoin: " + f.name, Expected: "key from the healthy endpoint; failure logged once per attempt as " + f.class,
				Got: got, Survived: won && failed >= 1 && failed <= requested && classOK,
				DataLost: changedBytes(before, readAll(t, disk.path), 0)})
		})
	}
}

// TestRejoinAllFaulty: with no healthy endpoint there is no key, and every
// finished attempt is logged exactly once (the last round may be cut short
// by the deadline).
func TestRejoinAllFaulty(t *testing.T) {
	p := newPKI(t)
	disk := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	before := readAll(t, disk.path)
	eps := []string{
		rawServer(t, drain),
		closedPort(t),
		serveJoin(t, listen(t), p.serverCreds(t, p.server), ticketFor(randomKey(t))),
	}
	run := runRejoin(t, disk, p, &rounds{lists: [][]string{eps}}, 1500*time.Millisecond)
	ok, summary := run.err != nil, ""
	for _, ep := range eps {
		requested, failed, classes := failures(run.logs, ep)
		ok = ok && failed >= requested-1 && failed <= requested && requested >= 2
		summary += fmt.Sprintf("%d/%d %v; ", failed, requested, uniq(classes))
	}
	allFailed := run.logs.count("Failed to rejoin on all endpoints")
	record(t, outcome{Case: "rejoin: every endpoint faulty (blackhole, closed, wrong key)",
		Expected: "no key; each attempt's failure logged once",
		Got:      fmt.Sprintf("race: %v; failures/attempts per endpoint: %s%d rounds failed", shortErr(run.err), summary, allFailed),
		Survived: ok && allFailed >= 1, DataLost: changedBytes(before, readAll(t, disk.path), 0)})
}

func uniq(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// TestRejoinFlappingEndpoint: the only endpoint is down in round 1, up in
// round 2 (same address), down again after.
func TestRejoinFlappingEndpoint(t *testing.T) {
	p := newPKI(t)
	disk := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	before := readAll(t, disk.path)
	addr := closedPort(t)
	src := &rounds{lists: [][]string{{addr}}, before: func(round int) {
		if round == 2 {
			lis, err := net.Listen("tcp", addr)
			if err != nil {
				t.Errorf("re-listening on %s: %v", addr, err)
				return
			}
			serveJoin(t, lis, p.serverCreds(t, p.server), ticketFor(disk.key))
		}
	}}
	run := runRejoin(t, disk, p, src, 10*time.Second)
	requested, failed, classes := failures(run.logs, addr)
	won := run.err == nil && bytes.Equal(run.res.Key.DiskKey, disk.key)
	run.res.Key.Zero()
	record(t, outcome{Case: "rejoin: flapping endpoint (down, then up on the same address)",
		Expected: "refused logged in round 1, key in round 2",
		Got:      fmt.Sprintf("key %v; %d attempts, %d failures %v", won, requested, failed, classes),
		Survived: won && requested == 2 && failed == 1 && len(classes) == 1 && classes[0] == "refused",
		DataLost: changedBytes(before, readAll(t, disk.path), 0)})
}

// portMap is the seam between the metadata API, whose records name
// IP:30090, and test servers on ephemeral loopback ports.
type portMap struct {
	src  rejoinclient.EndpointSource
	port string
}

func (m portMap) Endpoints(ctx context.Context) ([]string, error) {
	eps, err := m.src.Endpoints(ctx)
	for i, ep := range eps {
		host, _, _ := net.SplitHostPort(ep)
		eps[i] = net.JoinHostPort(host, m.port)
	}
	return eps, err
}

// TestRejoinMetadataFaults: the real metadata client against a loopback HTTP
// server that answers garbage, then an empty list, then records naming only
// this node, then a healthy control plane.
func TestRejoinMetadataFaults(t *testing.T) {
	p := newPKI(t)
	disk := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	before := readAll(t, disk.path)
	good := serveJoin(t, listen(t), p.serverCreds(t, p.server), ticketFor(disk.key))
	_, goodPort, _ := net.SplitHostPort(good)

	self := `{"name":"worker-0","role":"Worker","vpcIP":"127.0.0.2"}`
	peers := []string{
		"\x00\xffnot json at all{{{",
		`[]`,
		`[` + self + `]`,
		`[` + self + `,{"name":"cp-0","role":"ControlPlane","vpcIP":"127.0.0.1"}]`,
	}
	var served atomic.Int32
	lis := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/self":
			fmt.Fprint(w, self)
		case "/peers":
			i := int(served.Add(1)) - 1
			fmt.Fprint(w, peers[min(i, len(peers)-1)])
		default:
			http.NotFound(w, r)
		}
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	mc, err := metadata.New("http://" + lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	run := runRejoin(t, disk, p, portMap{src: mc, port: goodPort}, 10*time.Second)
	won := run.err == nil && bytes.Equal(run.res.Key.DiskKey, disk.key)
	run.res.Key.Zero()
	discoveryFailures := run.logs.count("Failed to discover JoinService endpoints")
	record(t, outcome{Case: "rejoin: metadata API garbage, empty list, no control plane, then healthy",
		Expected: "3 discovery failures logged, then key",
		Got:      fmt.Sprintf("key %v; %d discovery failures logged; %d /peers requests", won, discoveryFailures, served.Load()),
		Survived: won && discoveryFailures == 3 && served.Load() == 4,
		DataLost: changedBytes(before, readAll(t, disk.path), 0)})
}
