//go:build vmtest

package integration

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/cloud/fake"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/test/vmtest"
)

// Cloud provider scenarios (issue 12): per provider, a node boots with
// --cloud-provider=<p> and nothing else that says where its disk or the
// JoinService is. The provider's loopback fake (enforcing that cloud's
// metadata protocol) is reachable from the guest through guestfwd at
// guestCloudMetadata; the disk carries the provider's name through the test
// image's dm.disk-alias (standing in for the cloud's udev rules). First boot:
// the name appears 4 s late (the daemon waits, naming the path), the blank
// disk is formatted and keyed through the provider's discovery. Second
// boot: the node rejoins the same way and PCR 15 holds the cluster ID.
//
// The metadata base URL is injected (--metadata-url): slirp's guestfwd only
// takes addresses inside its 10.0.2.0/24 network, so the documented
// 169.254.169.254 cannot be forwarded; the unit tests pin that default.

// guestCloudMetadata is where the guest reaches the provider fake (port 80,
// as the real services).
const guestCloudMetadata = "10.0.2.98:80"

type cloudCase struct {
	provider string
	// alias: the provider's disk name, linked to /dev/vda; "" means the
	// provider's disk is a real device (OpenStack: /dev/vdb, the second disk).
	alias string
	// flags are extra daemon flags (kernel dm.* parameters).
	flags []string
	// tpmCloud is tpm-provision --cloud: the AK certificate goes to that
	// cloud's NV index, where the provider's issuer reads it.
	tpmCloud string
	start    func(fake.Node) (cloudFakeServer, error)
}

// cloudFakeServer is what the scenario needs of any fake.
type cloudFakeServer interface {
	Reads() int
	Rejected() int
	Close()
}

func fakePort(f cloudFakeServer) int {
	switch s := f.(type) {
	case *fake.GCP:
		return s.Port
	case *fake.AWS:
		return s.Port
	case *fake.Azure:
		return s.Port
	case *fake.OpenStack:
		return s.Port
	}
	panic("unknown fake")
}

var cloudCases = []cloudCase{
	{provider: "gcp", alias: "/dev/disk/by-id/google-state-disk", tpmCloud: "gcp",
		start: func(n fake.Node) (cloudFakeServer, error) { return fake.StartGCP(n) }},
	{provider: "aws", alias: "/dev/sdb",
		start: func(n fake.Node) (cloudFakeServer, error) { return fake.StartAWS(n) }},
	{provider: "azure", alias: "/dev/disk/azure/scsi1/lun2", flags: []string{"dm.azure-lun=2"}, tpmCloud: "azure",
		start: func(n fake.Node) (cloudFakeServer, error) { return fake.StartAzure(n) }},
	{provider: "openstack",
		start: func(n fake.Node) (cloudFakeServer, error) { return fake.StartOpenStack(n) }},
}

func TestCloudProviders(t *testing.T) {
	for _, cc := range cloudCases {
		t.Run(cc.provider, func(t *testing.T) { cloudScenario(t, cc) })
	}
}

func cloudScenario(t *testing.T, cc cloudCase) {
	scenario(t)
	s := getSuite(t)
	ctx := scenarioContext(t)

	// The node is a worker at slirp's 10.0.2.15; the metadata names the
	// JoinService at guestJoinIP (default port).
	f, err := cc.start(fake.Node{Role: "worker", IP: "10.0.2.15", Endpoints: guestJoinIP})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)

	dir := t.TempDir()
	n := &node{s: s, name: "node-" + cc.provider, disk: filepath.Join(dir, "state.img"), tpmDir: filepath.Join(dir, "tpm")}
	provision := []string{s.bin.tpmProvision, "--tpm", "{tpm}", "--ca-cert", s.platformCA, "--ca-key", s.platformKey}
	if cc.tpmCloud != "" {
		provision = append(provision, "--cloud", cc.tpmCloud)
	}
	if err := vmtest.ProvisionTPM(ctx, t, n.tpmDir, vmtest.ProvisionCommand(t, provision...)); err != nil {
		t.Fatalf("provisioning the TPM as %s: %v", cc.provider, err)
	}
	// OpenStack's state disk is the second virtio disk; /dev/vda is then a
	// scratch disk the daemon must leave alone.
	var first, second string
	wantDisk := "/dev/vdb"
	if cc.alias == "" {
		first, second = filepath.Join(dir, "boot.img"), n.disk
	} else {
		first, wantDisk = n.disk, cc.alias
	}

	// Each boot gets a JoinService that expects its exact configuration
	// (PCR 12 covers the provider flags and the disk alias).
	boot := func(label string, extra ...string) (*boot, *joinService) {
		cmdline := append([]string{
			"dm.attestation=tpm",
			"dm.join-ca=/etc/disk-mapper/ca.pem",
			"dm.cloud-provider=" + cc.provider,
			"dm.metadata-url=http://" + strings.TrimSuffix(guestCloudMetadata, ":80"),
			"dm.integrity=false",
		}, cc.flags...)
		cmdline = append(cmdline, extra...)
		js := s.startJoinServiceForCmdline(ctx, t, cmdline)
		cfg := vmtest.Config{
			Disk: first, DiskSize: diskSize, TPMStateDir: n.tpmDir, Initrd: s.image.Initrd,
			Cmdline: cmdline, Timeout: vmTimeout,
			Forwards: []vmtest.Forward{
				{Guest: guestCloudMetadata, HostPort: fakePort(f)},
				{Guest: net.JoinHostPort(guestJoinIP, strconv.Itoa(constants.JoinServicePort)), HostPort: js.port},
			},
		}
		if second != "" {
			cfg.Disk, cfg.DiskSize = first, 1<<20
			cfg.SecondDisk, cfg.SecondDiskSize = second, diskSize
		}
		vm, err := vmtest.Boot(ctx, t, cfg)
		if err != nil {
			t.Fatalf("%s: boot: %v", label, err)
		}
		b := &boot{VM: vm, node: n, label: n.name + " " + label, qemuStart: time.Now()}
		t.Cleanup(func() {
			scanBootForKeys(t, b)
			if t.Failed() {
				for _, l := range vm.Lines() {
					t.Logf("%s: %s", b.label, l)
				}
			}
		})
		return b, js
	}

	// First boot: the provider's disk name appears 4 s after the daemon starts
	// (it reaches the disk after ~1 s under TCG).
	var late []string
	if cc.alias != "" {
		late = []string{"dm.disk-alias=" + cc.alias + ":/dev/vda:4"}
	}
	b, js := boot("first boot", late...)
	start := b.mustMsg(ctx, t, "Starting disk-mapper")
	if got := start.Str("cloudProvider"); got != cc.provider {
		t.Errorf("first line cloudProvider %q, want %q: %s", got, cc.provider, start.Raw)
	}
	if p := b.mustMsg(ctx, t, "Cloud provider"); p.Str("stateDisk") != wantDisk {
		t.Errorf("provider chose %s, want %s", p.Str("stateDisk"), wantDisk)
	}
	if cc.alias != "" {
		w := b.mustMsg(ctx, t, "Waiting for state disk")
		if w.Str("disk") != cc.alias {
			t.Errorf("waiting line names %q, want %q: %s", w.Str("disk"), cc.alias, w.Raw)
		}
		b.mustMsg(ctx, t, "State disk appeared")
	}
	b.mustMsg(ctx, t, "Preparing new state disk")
	uuid := b.mustMsg(ctx, t, "State disk formatted").Str("uuid")
	waiting := b.must(ctx, t, waitingLine, "waiting line")
	eps := b.mustMsg(ctx, t, "Received list with JoinService endpoints")
	if want := guestJoinIP + ":30090"; !strings.Contains(eps.Raw, want) {
		t.Errorf("endpoints from %s metadata: %s, want %s", cc.provider, eps.Raw, want)
	}
	sum := b.summary(ctx, t, "RejoinClient", true)
	served, _ := js.lastTicket(uuid)
	recordBoot(t, b, waiting, sum, "ticket", served)
	b.finish(ctx, t)

	// Second boot: the name is there at once; the node rejoins.
	var now []string
	if cc.alias != "" {
		now = []string{"dm.disk-alias=" + cc.alias + ":/dev/vda"}
	}
	b, js = boot("rejoin", append(now, "dm.pcr=15")...)
	if prep := b.mustMsg(ctx, t, "Preparing existing state disk"); prep.Str("uuid") != uuid {
		t.Errorf("rejoin: disk %s, want %s", prep.Str("uuid"), uuid)
	}
	waiting = b.must(ctx, t, waitingLine, "waiting line")
	sum = b.summary(ctx, t, "RejoinClient", false)
	served, _ = js.lastTicket(uuid)
	recordBoot(t, b, waiting, sum, "ticket", served)
	if pcr := b.must(ctx, t, vmtest.Event("pcr"), "PCR 15"); pcr.Str("value") != s.expectedPCR15 {
		t.Errorf("PCR 15 = %s, want %s", pcr.Str("value"), s.expectedPCR15)
	}
	b.finish(ctx, t)

	if cc.alias == "" {
		// OpenStack: the first disk is not the provider's, so it was never touched.
		raw, err := os.ReadFile(first)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, make([]byte, len(raw))) {
			t.Errorf("the daemon wrote to /dev/vda, which is not the %s state disk", cc.provider)
		}
	}
	if f.Reads() == 0 || f.Rejected() != 0 {
		t.Errorf("%s fake: %d reads, %d requests rejected for breaking the protocol; want reads and no rejection",
			cc.provider, f.Reads(), f.Rejected())
	}
	t.Logf("%s fake: %d metadata reads, %d rejected", cc.provider, f.Reads(), f.Rejected())
}
