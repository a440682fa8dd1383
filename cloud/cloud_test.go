package cloud

import (
	"net/netip"
	"slices"
	"testing"
)

func TestParseRole(t *testing.T) {
	for in, want := range map[string]Role{"control-plane": RoleControlPlane, "worker\n": RoleWorker} {
		if got, err := ParseRole(in); err != nil || got != want {
			t.Errorf("%q: %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "ControlPlane", "controlplane", "Worker", "worker,control-plane"} {
		if _, err := ParseRole(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestJoinEndpointsRemovesOnlyAControlPlaneItself(t *testing.T) {
	eps := []string{"10.0.0.1:30090", "10.0.0.2:30090", "[fd00::1]:30090"}
	cp := Self{Role: RoleControlPlane, IP: netip.MustParseAddr("10.0.0.1")}
	if got, _ := JoinEndpoints(cp, eps); !slices.Equal(got, eps[1:]) {
		t.Errorf("control plane: %v", got)
	}
	w := Self{Role: RoleWorker, IP: netip.MustParseAddr("10.0.0.1")}
	if got, _ := JoinEndpoints(w, eps); !slices.Equal(got, eps) {
		t.Errorf("worker: %v", got)
	}
	if _, err := JoinEndpoints(cp, eps[:1]); err == nil {
		t.Error("a list of only itself was accepted")
	}
}
