package measure

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/prereq"
)

// initSplit runs the split_cmdline block of image/init, verbatim, in
// busybox sh (the init's shell) and returns the daemon flags and the test
// actions it produced.
func initSplit(t *testing.T, cmdline string) (flags, actions []string) {
	t.Helper()
	busybox := prereq.NeedTool(t, "busybox", "busybox-static")
	src, err := os.ReadFile("../../image/init")
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	begin, end := strings.Index(s, "# BEGIN split_cmdline\n"), strings.Index(s, "# END split_cmdline\n")
	if begin < 0 || end < begin {
		t.Fatal("image/init has no BEGIN/END split_cmdline block")
	}
	if !strings.Contains(s[:begin], "\nset -f\n") {
		t.Fatal("image/init does not turn globbing off (set -f) before it splits the command line")
	}
	// As in the init: no globbing, cmdline from /proc/cmdline (here $1).
	script := "set -f\ncmdline=$1\n" + s[begin:end] +
		"for f in \"$@\"; do printf 'F%s\\0' \"$f\"; done\nfor act in $actions; do printf 'A%s\\0' \"$act\"; done\n"
	dir := t.TempDir()
	// A file a glob in the command line would match if the split globbed.
	_ = os.WriteFile(filepath.Join(dir, "dm.glob=match"), nil, 0o644)
	cmd := exec.Command(busybox, "sh", "-c", script, "init", cmdline)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("busybox sh: %v", err)
	}
	for _, f := range bytes.Split(out, []byte{0}) {
		switch {
		case len(f) == 0:
		case f[0] == 'F':
			flags = append(flags, string(f[1:]))
		case f[0] == 'A':
			actions = append(actions, string(f[1:]))
		}
	}
	return flags, actions
}

// The init's shell and SplitCmdline (with which the image build and the
// harness predict PCR 12) turn every command line into the same argv.
func TestSplitCmdlineAgreesWithTheInit(t *testing.T) {
	for _, cmdline := range []string{
		"",
		"console=ttyS0 quiet panic=-1\n",
		"dm.attestation=tpm dm.join-ca=/etc/disk-mapper/ca.pem dm.integrity=false dm.write=a/b:c dm.read=a/b dm.pcr=15\n",
		"dm.key-handover-file=/dev/ttyS1 dm.integrity dm. dm.=x dm.write dm.writex=1 dm.pcr=\n",
		"\tdm.a=1\t\tdm.b=\"two words\" dm.c='q'  dm.d=x=y=z\n",
		"dm.glob=* dm.glob=m?tch dm.x=$HOME dm.y=`id` dm.z=$(id) dm.w=\\n",
		"dm.nbsp=a\u00a0b dm.vt=a\vb dm.cr=a\rb disk_mapper.join_endpoints=10.0.2.100 dm.get=http://x/y dm.rawbench=/dev/vdb:8\n",
		"dm.disk-alias=/dev/disk/by-id/google-state-disk:/dev/vda:4 dm.disk-alias dm.disk-aliasx=1 dm.state-disk=/dev/disk/by-id/google-state-disk\n",
	} {
		gotFlags, gotActions := initSplit(t, cmdline)
		flags, actions := SplitCmdline(cmdline)
		if !reflect.DeepEqual(gotFlags, flags) || !reflect.DeepEqual(gotActions, actions) {
			t.Errorf("cmdline %q:\n init  flags %q actions %q\n Go    flags %q actions %q", cmdline, gotFlags, gotActions, flags, actions)
		}
	}
}

// The encoding is pinned: a change to it changes every image's expected
// values, so it must be a deliberate one (docs/pcr-map.md documents it).
func TestEventEncoding(t *testing.T) {
	root := t.TempDir()
	write(t, root, "init", "i")
	write(t, root, "bin/d", "d")
	b := Boot{Root: root, Argv: []string{"/bin/d", "--a=1"}, Env: []string{"PATH=/bin"}, Cmdline: "x disk_mapper.k=v y"}
	events, err := b.Events()
	if err != nil {
		t.Fatal(err)
	}
	h := func(s string) string { return string(sha256sum([]byte(s))) }
	want := []struct {
		pcr  uint32
		data string
	}{
		{11, "disk-mapper-measurement/v1\x00file\x00/init\x00" + h("i")},
		{11, "disk-mapper-measurement/v1\x00file\x00/bin/d\x00" + h("d")},
		{12, "disk-mapper-measurement/v1\x00argv\x00/bin/d\x00--a=1\x00"},
		{12, "disk-mapper-measurement/v1\x00environment\x00PATH=/bin\x00"},
		{12, "disk-mapper-measurement/v1\x00kernel-command-line\x00x\x00disk_mapper.k=v\x00y\x00"},
		{12, "disk-mapper-measurement/v1\x00kernel-parameters\x00disk_mapper.k=v\x00"},
		{12, "disk-mapper-measurement/v1\x00config-dir\x00/etc/disk-mapper\x00"},
		{12, "disk-mapper-measurement/v1\x00environment-file\x00/etc/default/disk-mapper\x00"},
	}
	if len(events) != len(want) {
		t.Fatalf("%d events, want %d", len(events), len(want))
	}
	for i, w := range want {
		if events[i].PCR != w.pcr || string(events[i].Data) != w.data {
			t.Errorf("event %d: PCR %d %q, want PCR %d %q", i, events[i].PCR, events[i].Data, w.pcr, w.data)
		}
	}
	if _, err := (Boot{Root: root, Argv: []string{"/bin/d", "a\x00b"}}).Events(); err == nil {
		t.Error("an argv with a NUL was measured")
	}
}

// /etc/disk-mapper/ is measured by names, types and contents in a
// canonical order: the same tree always gives the same value, and any
// change to it another.
func TestConfigDirEvent(t *testing.T) {
	value := func(root string) string {
		t.Helper()
		e, err := ConfigDirEvent(root, constants.ConfigDir)
		if err != nil {
			t.Fatal(err)
		}
		return Hex(e.Digest())
	}
	tree := func(files ...string) string {
		root := t.TempDir()
		for i := 0; i+1 < len(files); i += 2 {
			write(t, root, "etc/disk-mapper/"+files[i], files[i+1])
		}
		return root
	}
	// Byte order of the whole relative path ("a-b" < "a/b"), not the
	// directory walk's order, whatever order the files were created in.
	one := tree("a/b", "1", "a-b", "2", "ca.pem", "3")
	two := tree("ca.pem", "3", "a-b", "2", "a/b", "1")
	base := value(one)
	if value(two) != base {
		t.Error("the same tree created in another order measures differently")
	}
	absent := t.TempDir()
	empty := t.TempDir()
	if err := os.MkdirAll(filepath.Join(empty, "etc/disk-mapper"), 0o755); err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{base: "base", value(absent): "absent"}
	link := tree("a/b", "1", "a-b", "2", "ca.pem", "3")
	if err := os.Symlink("/run/x", filepath.Join(link, "etc/disk-mapper/extra")); err != nil {
		t.Fatal(err)
	}
	for name, root := range map[string]string{
		"empty":          empty,
		"content":        tree("a/b", "1", "a-b", "2", "ca.pem", "4"),
		"renamed":        tree("a/c", "1", "a-b", "2", "ca.pem", "3"),
		"file added":     tree("a/b", "1", "a-b", "2", "ca.pem", "3", "z", ""),
		"file removed":   tree("a/b", "1", "a-b", "2"),
		"symlink added":  link,
		"moved into dir": tree("a/b", "1", "a/a-b", "2", "ca.pem", "3"),
	} {
		v := value(root)
		if prev, dup := seen[v]; dup {
			t.Errorf("%s measures like %s", name, prev)
		}
		seen[v] = name
	}
}

func TestEnvironmentFileEvent(t *testing.T) {
	seen := map[string]string{}
	for name, content := range map[string]*string{"absent": nil, "empty": ptr(""), "args": ptr("DISK_MAPPER_ARGS=--integrity=false\n")} {
		root := t.TempDir()
		if content != nil {
			write(t, root, "etc/default/disk-mapper", *content)
		}
		e, err := EnvironmentFileEvent(root, constants.EnvironmentFile)
		if err != nil {
			t.Fatal(err)
		}
		if prev, dup := seen[Hex(e.Digest())]; dup {
			t.Errorf("%s measures like %s", name, prev)
		}
		seen[Hex(e.Digest())] = name
	}
}

func ptr(s string) *string { return &s }

func write(t *testing.T, root, p, content string) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func sha256sum(b []byte) []byte {
	d := sha256.Sum256(b)
	return d[:]
}

// The kernel's own split decides what it and init see; everything but the
// dm.* parameters (argv or test actions) is measured by it.
func TestKernelCmdline(t *testing.T) {
	for cmdline, want := range map[string][]string{
		"console=ttyS0 quiet panic=-1 dm.integrity=false dm.write=a:b\n": {"console=ttyS0", "quiet", "panic=-1"},
		"rdinit=/bin/sh dm.attestation=tpm":                              {"rdinit=/bin/sh"},
		`x="a dm.write=b" dm.y="c d" init=/bin/sh`:                       {`x="a dm.write=b"`, "init=/bin/sh"},
		"a\vb\rc\xa0d\te\ff":                                             {"a", "b", "c", "d", "e", "f"},
		"":                                                               nil,
		// The init's setup key decides which disk the daemon opens: measured.
		"quiet dm.disk-alias=/dev/sdb:/dev/vda dm.state-disk=/dev/sdb": {"quiet", "dm.disk-alias=/dev/sdb:/dev/vda"},
	} {
		if got := KernelCmdline(cmdline); !reflect.DeepEqual(got, want) {
			t.Errorf("KernelCmdline(%q) = %q, want %q", cmdline, got, want)
		}
	}
}
