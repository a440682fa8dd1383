package vmtest

import (
	"strings"
	"testing"
	"time"
)

// Pure parsing and option-building logic; the smoke test (build tag vmtest)
// covers the same code against a real QEMU.

func TestParseLine(t *testing.T) {
	l := parseLine(3, 1500*time.Millisecond, "\x00junk {\"msg\":\"Waiting for decryption key\",\"event\":\"waiting\",\"status\":0,\"ok\":true}")
	if l.Fields == nil {
		t.Fatalf("line not parsed: %+v", l)
	}
	if l.Msg() != "Waiting for decryption key" || l.Event() != "waiting" || l.Str("status") != "0" || l.Str("ok") != "true" {
		t.Fatalf("fields: msg=%q event=%q status=%q ok=%q", l.Msg(), l.Event(), l.Str("status"), l.Str("ok"))
	}
	if !All(Msg("Waiting for decryption key"), Field("status", "0"))(l) || Field("missing", "")(l) {
		t.Fatal("predicates disagree with the fields")
	}
	if !strings.Contains(l.String(), "1500ms") {
		t.Fatalf("String() = %q, want the host time", l.String())
	}

	panicLine := parseLine(4, 0, "panic: runtime error")
	if panicLine.Fields != nil || panicLine.Raw != "panic: runtime error" || Any(InitDone, Event("start"))(panicLine) {
		t.Fatalf("non-JSON line: %+v", panicLine)
	}
}

func TestNetdevArgRestrictsAndValidates(t *testing.T) {
	got, err := netdevArg([]Forward{{Guest: "10.0.2.100:30090", HostPort: 41000}}, 42000, 9999)
	if err != nil {
		t.Fatal(err)
	}
	want := "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:42000-:9999,guestfwd=tcp:10.0.2.100:30090-cmd:busybox nc 127.0.0.1 41000"
	if got != want {
		t.Fatalf("netdev\n got %s\nwant %s", got, want)
	}
	for _, bad := range []Forward{
		{Guest: "192.168.1.5:80", HostPort: 1},  // outside slirp's network
		{Guest: "10.0.2.100", HostPort: 1},      // no port
		{Guest: "10.0.2.100:80", HostPort: 0},   // no host port
		{Guest: "10.0.2.100:80", HostPort: 1e6}, // out of range
	} {
		if _, err := netdevArg([]Forward{bad}, 1, 2); err == nil {
			t.Errorf("forward %+v accepted", bad)
		}
	}
}
