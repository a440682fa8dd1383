package measure

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestConfigEnvKeepsOnlyTheAllowListAndOwnSockets(t *testing.T) {
	environ := []string{"PATH=/host/bin", "INVOCATION_ID=abc", "JOURNAL_STREAM=8:123", "DISK_MAPPER_ARGS=--x",
		"LISTEN_FDS=1", "LISTEN_FDNAMES=disk-mapper-key.socket", "LISTEN_PID=42", "GODEBUG=x509ignoreCN=0"}
	run, measured := ConfigEnv(environ, 42)
	wantRun := append(append([]string(nil), DaemonEnv...), "LISTEN_FDNAMES=disk-mapper-key.socket", "LISTEN_FDS=1", "LISTEN_PID=42")
	wantMeasured := append(append([]string(nil), DaemonEnv...), "LISTEN_FDNAMES=disk-mapper-key.socket", "LISTEN_FDS=1", "LISTEN_PID")
	if !reflect.DeepEqual(run, wantRun) || !reflect.DeepEqual(measured, wantMeasured) {
		t.Errorf("ConfigEnv = %q, %q; want %q, %q", run, measured, wantRun, wantMeasured)
	}
	// Sockets of another process are not the daemon's: all LISTEN_* dropped.
	run, measured = ConfigEnv(environ, 43)
	if !reflect.DeepEqual(run, DaemonEnv) || !reflect.DeepEqual(measured, DaemonEnv) {
		t.Errorf("LISTEN_PID of another process: %q, %q", run, measured)
	}
	// The pid's value never changes what is measured.
	_, a := ConfigEnv([]string{"LISTEN_FDS=1", "LISTEN_PID=7"}, 7)
	_, b := ConfigEnv([]string{"LISTEN_FDS=1", "LISTEN_PID=9"}, 9)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("measured environment depends on the pid: %q vs %q", a, b)
	}
}

func TestEnvironmentFileArgs(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "etc/default/disk-mapper")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if args, err := EnvironmentFileArgs(root); err != nil || args != nil {
		t.Fatalf("absent file: %q, %v", args, err)
	}
	if err := os.WriteFile(p, []byte("# c\nDISK_MAPPER_ARGS=--a\nDISK_MAPPER_ARGS=\"--b=1  --c\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args, err := EnvironmentFileArgs(root)
	if err != nil || !reflect.DeepEqual(args, []string{"--b=1", "--c"}) {
		t.Fatalf("args = %q, %v", args, err)
	}
}

// The image tree: every entry of /etc and /usr counts, /etc/machine-id
// does not; the command line is measured whole, dm.* included.
func TestStubEventsCoverTheTreeButMachineID(t *testing.T) {
	root := t.TempDir()
	write := func(p, c string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/machine-id", "")
	write("etc/systemd/system/disk-mapper.service", "[Unit]\n")
	write("usr/bin/disk-mapper", "daemon")
	base, err := StubEvents(root, "console=ttyS0 dm.x=1")
	if err != nil {
		t.Fatal(err)
	}
	if len(base) != 3 || base[2].Desc != "console=ttyS0 dm.x=1" {
		t.Fatalf("events %+v", base)
	}
	write("etc/machine-id", "0123456789abcdef0123456789abcdef\n")
	same, _ := StubEvents(root, "console=ttyS0 dm.x=1")
	if !reflect.DeepEqual(Expected(base), Expected(same)) {
		t.Error("/etc/machine-id changed PCR 11")
	}
	write("usr/bin/disk-mapper", "another daemon")
	other, _ := StubEvents(root, "console=ttyS0 dm.x=1")
	if reflect.DeepEqual(Expected(base)[11], Expected(other)[11]) {
		t.Error("a changed /usr/bin/disk-mapper left PCR 11 alone")
	}
}
