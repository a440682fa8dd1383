package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/diskmapper/disk-mapper/cloud/fake"
	"go.uber.org/zap/zaptest"
)

func TestProviderStateDiskAndOverride(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		disk, akNV string
	}{
		{nil, "/dev/vda", "0x1000d30"},
		{[]string{"--cloud-provider=qemu"}, "/dev/vda", "0x1000d30"},
		{[]string{"--cloud-provider=gcp"}, "/dev/disk/by-id/google-state-disk", "0x1c10002"},
		{[]string{"--cloud-provider=aws"}, "/dev/sdb", "0x1000d30"},
		{[]string{"--cloud-provider=azure"}, "/dev/disk/azure/scsi1/lun0", "0x1c101d0"},
		{[]string{"--cloud-provider=azure", "--azure-lun=7"}, "/dev/disk/azure/scsi1/lun7", "0x1c101d0"},
		{[]string{"--cloud-provider=openstack"}, "/dev/vdb", "0x1000d30"},
		{[]string{"--cloud-provider=gcp", "--state-disk=/dev/vdc"}, "/dev/vdc", "0x1c10002"},
		// Given explicitly, even the old default wins over the provider.
		{[]string{"--state-disk=/dev/vda", "--cloud-provider=openstack"}, "/dev/vda", "0x1000d30"},
		{[]string{"--cloud-provider=aws", "--ak-cert-nv-index=0x01C10002"}, "/dev/sdb", "0x1c10002"},
	} {
		o, err := parseFlags(tc.args)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		idx, _ := akCertIndex(o)
		if o.stateDisk != tc.disk || fmtHandle(uint32(idx)) != tc.akNV {
			t.Errorf("%v: disk %s, AK index %s; want %s, %s", tc.args, o.stateDisk, fmtHandle(uint32(idx)), tc.disk, tc.akNV)
		}
	}
	for _, bad := range [][]string{
		{"--cloud-provider=ec2"}, {"--cloud-provider=GCP"}, {"--cloud-provider="},
		{"--cloud-provider=azure", "--azure-lun=64"}, {"--cloud-provider=azure", "--azure-lun=-1"},
		{"--ak-cert-nv-index=0x81000003"}, {"--ak-cert-nv-index=zz"},
	} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func fmtHandle(h uint32) string { return fmt.Sprintf("%#x", h) }

// On a cloud the endpoint source is the provider, asked afresh each round;
// --join-endpoints and the kernel command line still come first.
func TestEndpointSourceIsTheProvider(t *testing.T) {
	f, err := fake.StartAWS(fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.2"})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log := zaptest.NewLogger(t)
	o, err := parseFlags([]string{"--cloud-provider=aws", "--metadata-url=" + f.URL,
		"--kernel-cmdline=" + filepath.Join(t.TempDir(), "absent")})
	if err != nil {
		t.Fatal(err)
	}
	src, err := endpointSource(o, log)
	if err != nil || src == nil {
		t.Fatalf("source %v, %v", src, err)
	}
	if got, err := src.Endpoints(t.Context()); err != nil || !slices.Equal(got, []string{"10.0.0.2:30090"}) {
		t.Fatalf("%v, %v", got, err)
	}
	f.SetNode(fake.Node{Role: "worker", IP: "10.0.0.5", Endpoints: "10.0.0.3"})
	if got, err := src.Endpoints(t.Context()); err != nil || !slices.Equal(got, []string{"10.0.0.3:30090"}) {
		t.Fatalf("second round: %v, %v", got, err)
	}
	o.joinEndpoints = "10.9.9.9"
	if src, _ := endpointSource(o, log); src == nil {
		t.Fatal("no source")
	} else if got, _ := src.Endpoints(t.Context()); !slices.Equal(got, []string{"10.9.9.9:30090"}) {
		t.Fatalf("--join-endpoints did not win: %v", got)
	}
	o.joinEndpoints, o.metadataURL = "", "not a url"
	if _, err := endpointSource(o, log); err == nil {
		t.Fatal("a bad --metadata-url was accepted")
	}
}
