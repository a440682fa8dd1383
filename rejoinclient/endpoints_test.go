package rejoinclient

import (
	"errors"
	"slices"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/spf13/afero"
)

func TestParseEndpoints(t *testing.T) {
	for in, want := range map[string][]string{
		"10.9.0.5:30090,10.9.0.6:30090": {"10.9.0.5:30090", "10.9.0.6:30090"},
		"10.9.0.5, 10.9.0.6:1234,":      {"10.9.0.5:30090", "10.9.0.6:1234"},
		"[fd00::1]:30090,fd00::2":       {"[fd00::1]:30090", "[fd00::2]:30090"},
		"[fd00::3]":                     {"[fd00::3]:30090"},
	} {
		got, err := ParseEndpoints(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ParseEndpoints(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ",", "joinservice.local:30090", "10.9.0.5:http", "10.9.0.5:0", "10.9.0.5:70000", "300.1.1.1", "fe80::1%eth0"} {
		if got, err := ParseEndpoints(bad); err == nil {
			t.Errorf("ParseEndpoints(%q) = %v, want error", bad, got)
		}
	}
}

func TestEndpointsFromKernelCmdline(t *testing.T) {
	fs := afero.NewMemMapFs()
	write := func(s string) {
		if err := afero.WriteFile(fs, constants.KernelCmdline, []byte(s), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	write("console=ttyS0 disk_mapper.join_endpoints=10.0.2.100:30090,10.0.2.101 quiet disk_mapper.other=1\n")
	got, err := EndpointsFromKernelCmdline(fs, constants.KernelCmdline)
	if err != nil || !slices.Equal(got, StaticEndpoints{"10.0.2.100:30090", "10.0.2.101:30090"}) {
		t.Fatalf("got %v, %v", got, err)
	}
	eps, err := got.Endpoints(t.Context())
	if err != nil || !slices.Equal(eps, []string(got)) {
		t.Errorf("Endpoints() = %v, %v", eps, err)
	}

	write("disk_mapper.join_endpoints=10.0.0.1 disk_mapper.join_endpoints=\"10.0.0.2:1\"")
	if got, err := EndpointsFromKernelCmdline(fs, constants.KernelCmdline); err != nil || !slices.Equal(got, StaticEndpoints{"10.0.0.2:1"}) {
		t.Errorf("last occurrence: got %v, %v", got, err)
	}

	write("console=ttyS0 disk_mapper.join_endpointsX=1")
	if _, err := EndpointsFromKernelCmdline(fs, constants.KernelCmdline); !errors.Is(err, ErrNoCmdlineEndpoints) {
		t.Errorf("missing parameter: err = %v", err)
	}
	write("disk_mapper.join_endpoints=bogus")
	if _, err := EndpointsFromKernelCmdline(fs, constants.KernelCmdline); err == nil || errors.Is(err, ErrNoCmdlineEndpoints) {
		t.Errorf("invalid value: err = %v", err)
	}
	if _, err := EndpointsFromKernelCmdline(fs, "/nonexistent"); err == nil {
		t.Error("missing file: no error")
	}
	if _, err := (StaticEndpoints{}).Endpoints(t.Context()); err == nil {
		t.Error("empty static list: no error")
	}
}
