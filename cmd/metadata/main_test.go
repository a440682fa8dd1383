package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskmapper/disk-mapper/rejoinclient/metadata"
	"github.com/spf13/afero"
)

// startMetadata runs the command in-process on a loopback port.
func startMetadata(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrCh := make(chan string, 1)
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...), &stderr, afero.NewOsFs(), func(a string) { addrCh <- a })
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
	select {
	case a := <-addrCh:
		return "http://" + a
	case code := <-done:
		t.Fatalf("exit %d: %s", code, stderr.String())
		return ""
	}
}

func TestServesSelfAndPeersToTheNodesMetadataClient(t *testing.T) {
	file := filepath.Join(t.TempDir(), "cluster.json")
	if err := os.WriteFile(file, []byte(`[
		{"name":"cp-0","role":"ControlPlane","vpcIP":"10.0.2.100"},
		{"name":"node-1","role":"Worker","vpcIP":"10.0.2.15"}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	url := startMetadata(t, "--instances", file, "--instance", "cp-1,ControlPlane,10.0.2.101", "--self", "node-1")
	client, err := metadata.New(url)
	if err != nil {
		t.Fatal(err)
	}
	self, err := client.Self(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if self.Name != "node-1" || self.Role != metadata.RoleWorker || self.VPCIP != "10.0.2.15" {
		t.Errorf("self = %+v", self)
	}
	eps, err := client.Endpoints(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || eps[0] != "10.0.2.100:30090" || eps[1] != "10.0.2.101:30090" {
		t.Errorf("endpoints = %v", eps)
	}
}

func TestSelfBySourceAddressWithoutSelfFlag(t *testing.T) {
	url := startMetadata(t, "--instance", "cp-0,ControlPlane,10.0.2.100", "--instance", "local,Worker,127.0.0.1")
	client, _ := metadata.New(url)
	self, err := client.Self(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if self.Name != "local" {
		t.Errorf("self = %+v, want the record of 127.0.0.1", self)
	}
}

func TestRejectsBadConfig(t *testing.T) {
	for name, args := range map[string][]string{
		"none":         {},
		"bad role":     {"--instance", "a,Master,10.0.0.1"},
		"bad ip":       {"--instance", "a,Worker,10.0.0"},
		"duplicate":    {"--instance", "a,Worker,10.0.0.1", "--instance", "a,Worker,10.0.0.2"},
		"unknown self": {"--instance", "a,Worker,10.0.0.1", "--self", "b"},
		"bad format":   {"--instance", "a,Worker"},
	} {
		var stderr bytes.Buffer
		if code := run(t.Context(), append([]string{"--listen", "127.0.0.1:0"}, args...), &stderr, afero.NewOsFs(), nil); code != 2 {
			t.Errorf("%s: exit %d, want 2", name, code)
		}
	}
}
