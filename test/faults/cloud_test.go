package faults

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/cloud"
	"github.com/diskmapper/disk-mapper/cloud/aws"
	"github.com/diskmapper/disk-mapper/cloud/azure"
	"github.com/diskmapper/disk-mapper/cloud/fake"
	"github.com/diskmapper/disk-mapper/cloud/gcp"
	"github.com/diskmapper/disk-mapper/cloud/openstack"
	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/rejoinclient"
)

// Cloud metadata faults (issue 12 item 6): each provider's real client
// against its protocol-enforcing loopback fake, feeding a real RejoinClient
// (aTLS, CA-pinned JoinService on 127.0.0.1) raced against the keyslots of a
// real LUKS2 disk. The host serves the metadata, so every fault is also an
// attack: the row passes if the node only waits (discovery failures logged,
// no key, disk untouched) while the fault lasts, and rejoins once the
// metadata is honest again.

// metadataTimeout is the clients' per-request timeout here (the daemon
// uses imds.DefaultTimeout); FaultSlow answers after 10 s.
const metadataTimeout = 300 * time.Millisecond

// cloudFake is one provider's fake and client, seen through what the rows need.
type cloudFake struct {
	name     string
	setFault func(fake.Fault)
	setNode  func(fake.Node)
	src      cloud.Provider
	faults   []fake.Fault
	aws      *fake.AWS
}

var commonFaults = []fake.Fault{fake.FaultNotFound, fake.FaultServerError, fake.FaultGarbage, fake.FaultOversized, fake.FaultSlow}

func startCloudFakes(t *testing.T, n fake.Node) []cloudFake {
	t.Helper()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	g, err := fake.StartGCP(n)
	must(err)
	a, err := fake.StartAWS(n)
	must(err)
	z, err := fake.StartAzure(n)
	must(err)
	o, err := fake.StartOpenStack(n)
	must(err)
	t.Cleanup(func() { g.Close(); a.Close(); z.Close(); o.Close() })
	gc, err := gcp.New(g.URL, metadataTimeout)
	must(err)
	ac, err := aws.New(a.URL, metadataTimeout)
	must(err)
	zc, err := azure.New(z.URL, 0, metadataTimeout)
	must(err)
	oc, err := openstack.New(o.URL, metadataTimeout)
	must(err)
	return []cloudFake{
		{"gcp", g.SetFault, g.SetNode, gc, append(commonFaults, fake.FaultNoFlavor), nil},
		{"aws", a.SetFault, a.SetNode, ac, commonFaults, a},
		{"azure", z.SetFault, z.SetNode, zc, commonFaults, nil},
		{"openstack", o.SetFault, o.SetNode, oc, commonFaults, nil},
	}
}

// faultyRounds passes the provider's answer on, calling heal before the
// round number healAt, and counts rounds.
type faultyRounds struct {
	src    rejoinclient.EndpointSource
	healAt int
	heal   func()

	mu sync.Mutex
	n  int
}

func (f *faultyRounds) Endpoints(ctx context.Context) ([]string, error) {
	f.mu.Lock()
	f.n++
	if f.n == f.healAt {
		f.heal()
	}
	f.mu.Unlock()
	return f.src.Endpoints(ctx)
}

func (f *faultyRounds) rounds() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// faultRounds is how many rounds a fault lasts before the fake heals.
const faultRounds = 2

func TestCloudMetadataFaults(t *testing.T) {
	p := newPKI(t)
	disk := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	before := readAll(t, disk.path)
	good := serveJoin(t, listen(t), p.serverCreds(t, p.server), ticketFor(disk.key))
	_, goodPort, _ := net.SplitHostPort(good)
	healthy := fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "127.0.0.1", LoadBalancer: nil}

	for _, cf := range startCloudFakes(t, healthy) {
		for _, f := range cf.faults {
			t.Run(cf.name+"/"+f.String(), func(t *testing.T) {
				cf.setFault(f)
				src := &faultyRounds{src: cf.src, healAt: faultRounds + 1, heal: func() { cf.setFault(fake.FaultNone) }}
				run := runRejoin(t, disk, p, portMap{src: src, port: goodPort}, 15*time.Second)
				won := run.err == nil && bytes.Equal(run.res.Key.DiskKey, disk.key)
				run.res.Key.Zero()
				discoveryFailures := run.logs.count("Failed to discover JoinService endpoints")
				record(t, outcome{Case: fmt.Sprintf("cloud %s metadata: %s for %d rounds, then healthy", cf.name, f, faultRounds),
					Expected: fmt.Sprintf("%d discovery failures, no attempt, then key", faultRounds),
					Got: fmt.Sprintf("key %v; %d discovery failures; %d rounds; %d ticket requests", won, discoveryFailures,
						src.rounds(), run.logs.count("Requesting rejoin ticket")),
					Survived: won && discoveryFailures == faultRounds && run.logs.count("Requesting rejoin ticket") == 1,
					DataLost: changedBytes(before, readAll(t, disk.path), 0)})
			})
		}
	}
}

// Hostile but well-formed metadata: the host names its own JoinService
// (a TLS certificate not from the image's CA), or tells a control-plane
// node that only it serves keys. The node must wait, not take a key, and
// rejoin once the metadata names the real control plane.
func TestCloudMetadataHostileAnswers(t *testing.T) {
	p := newPKI(t)
	disk := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	before := readAll(t, disk.path)
	rogueKey := bytes.Repeat([]byte{0x42}, 32)
	rogueLis, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	rogue := serveJoin(t, rogueLis, p.serverCreds(t, p.rogue), ticketFor(rogueKey))
	good := serveJoin(t, listen(t), p.serverCreds(t, p.server), ticketFor(disk.key))
	_, roguePort, _ := net.SplitHostPort(rogue)
	_, goodPort, _ := net.SplitHostPort(good)
	// Both servers are on 127.0.0.1; the metadata tells them apart by IP
	// (127.0.0.2 is the rogue's), and the port map sends each to its port.
	hostile := fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "127.0.0.2"}
	honest := fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "127.0.0.1"}
	onlySelf := fake.Node{Role: "control-plane", IP: "127.0.0.1", Endpoints: "127.0.0.1"}

	for _, cf := range startCloudFakes(t, hostile) {
		for _, tc := range []struct {
			what string
			node fake.Node
		}{{"rogue JoinService", hostile}, {"control plane told it is alone", onlySelf}} {
			t.Run(cf.name+"/"+tc.what, func(t *testing.T) {
				cf.setNode(tc.node)
				src := &faultyRounds{src: cf.src, healAt: 4, heal: func() { cf.setNode(honest) }}
				run := runRejoin(t, disk, p, ipPortMap{src: src, ports: map[string]string{"127.0.0.1": goodPort, "127.0.0.2": roguePort}}, 15*time.Second)
				won := run.err == nil && bytes.Equal(run.res.Key.DiskKey, disk.key)
				run.res.Key.Zero()
				_, rogueFailed, _ := failures(run.logs, rogue)
				discoveryFailures := run.logs.count("Failed to discover JoinService endpoints")
				// The rogue is dialled and refused; "alone" never dials.
				blocked := rogueFailed == 3
				if tc.node.Role == onlySelf.Role {
					blocked = discoveryFailures == 3 && rogueFailed == 0
				}
				record(t, outcome{Case: fmt.Sprintf("cloud %s metadata: %s for 3 rounds, then honest", cf.name, tc.what),
					Expected: "no key from the host (3 refused rounds), then the cluster's key",
					Got: fmt.Sprintf("key %v; %d rounds; rogue attempts failed %d; discovery failures %d",
						won, src.rounds(), rogueFailed, discoveryFailures),
					Survived: won && src.rounds() == 4 && blocked,
					DataLost: changedBytes(before, readAll(t, disk.path), 0)})
			})
		}
	}
}

// AWS: the session token expires between rounds; the client takes a new one
// within the round, so the node does not even see a failure.
func TestCloudAWSExpiredToken(t *testing.T) {
	p := newPKI(t)
	disk := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	before := readAll(t, disk.path)
	bad := closedPort(t)
	good := serveJoin(t, listen(t), p.serverCreds(t, p.server), ticketFor(disk.key))
	_, badPort, _ := net.SplitHostPort(bad)
	_, goodPort, _ := net.SplitHostPort(good)
	var a *fake.AWS
	var src cloud.Provider
	for _, cf := range startCloudFakes(t, fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "127.0.0.2"}) {
		if cf.name == "aws" {
			a, src = cf.aws, cf.src
		}
	}
	// Round 1 names a dead endpoint (so a second round happens); before
	// round 2 the token expires and the metadata names the live one.
	rounds := &faultyRounds{src: src, healAt: 2, heal: func() {
		a.ExpireTokens()
		a.SetNode(fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "127.0.0.1"})
	}}
	run := runRejoin(t, disk, p, ipPortMap{src: rounds, ports: map[string]string{"127.0.0.1": goodPort, "127.0.0.2": badPort}}, 15*time.Second)
	won := run.err == nil && bytes.Equal(run.res.Key.DiskKey, disk.key)
	run.res.Key.Zero()
	discoveryFailures := run.logs.count("Failed to discover JoinService endpoints")
	record(t, outcome{Case: "cloud aws metadata: session token expired between rounds",
		Expected: "new token within the round (one 401), no discovery failure, key",
		Got: fmt.Sprintf("key %v; tokens issued %d; 401s for expiry %d; discovery failures %d", won,
			a.TokensIssued(), a.ExpiredTokenRefusals(), discoveryFailures),
		Survived: won && a.TokensIssued() == 2 && a.ExpiredTokenRefusals() == 1 && discoveryFailures == 0,
		DataLost: changedBytes(before, readAll(t, disk.path), 0)})
}

// ipPortMap sends each metadata-named IP to a loopback port, keeping the IP
// distinct in the RejoinClient's view and logs.
type ipPortMap struct {
	src   rejoinclient.EndpointSource
	ports map[string]string
}

func (m ipPortMap) Endpoints(ctx context.Context) ([]string, error) {
	eps, err := m.src.Endpoints(ctx)
	for i, ep := range eps {
		host, _, _ := net.SplitHostPort(ep)
		if port, ok := m.ports[host]; ok {
			eps[i] = net.JoinHostPort(host, port)
		}
	}
	return eps, err
}
