package measure

// The systemd image's measurements (docs/pcr-map.md, "systemd image"). A
// real node boots a UKI: systemd-stub measures the image (every section,
// the initrd among them) into PCR 11 and a command line the boot loader
// passed into PCR 12, then the daemon's unit measures its configuration
// into PCR 12 right before it runs. The test image has no stub (qboot, no
// UKI), so an early unit plays it (dm-measure stub):
//
//	PCR 11  image-tree          "/etc" 0x00 entry …   (the initrd's /etc as unpacked, see ImageTreeEvents)
//	PCR 11  image-tree          "/usr" 0x00 entry …   (everything else: merged /usr, bin/lib/sbin link there)
//	PCR 12  boot-command-line   param 0x00 …          (the whole command line, kernel split)
//
// A UKI's stub measures the initrd as one blob. The pinned 6.1 kernel
// cannot hand the loaded initrd to user space (/sys/firmware/initrd with
// retain_initrd is 6.9+), so the stand-in measures the unpacked tree: every
// entry's name, type and content, like config-dir, which covers every file
// of the cpio but the empty /etc/machine-id (systemd fills it in at boot).
//
// and the unit's ExecStart (dm-measure boot-config) measures the daemon's
// configuration and execs it:
//
//	PCR 12  argv                arg 0x00 …      (exactly what systemd expanded)
//	PCR 12  environment         "K=V" 0x00 …    (the allow-list the daemon gets; see ConfigEnv)
//	PCR 12  kernel-parameters   param 0x00 …    (disk_mapper.* fields, the daemon's split)
//	PCR 12  config-dir          /etc/disk-mapper
//	PCR 12  environment-file    /etc/default/disk-mapper

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// Kinds of the systemd image's stub events.
const (
	KindImageTree       = "image-tree"
	KindBootCommandLine = "boot-command-line"
)

// ImageTreeDirs are the initrd's directories measured into PCR 11, and
// imageTreeSkip the entries left out (relative to their directory).
var (
	ImageTreeDirs = []string{"/etc", "/usr"}
	imageTreeSkip = map[string]bool{"/etc/machine-id": true}
)

// SystemdDaemonPath is the daemon's path in the systemd image.
const SystemdDaemonPath = "/usr/bin/disk-mapper"

// ImageTreeEvents measure the image's directories ImageTreeDirs below
// root into PCR 11, each entry encoded like ConfigDirEvent's.
func ImageTreeEvents(root string) ([]Event, error) {
	var events []Event
	for _, dir := range ImageTreeDirs {
		payload, n, err := treePayload(root, dir, imageTreeSkip, false)
		if err != nil {
			return nil, err
		}
		events = append(events, newEvent(constants.PCRImage, KindImageTree, fmt.Sprintf("%s (%d entries)", dir, n), payload))
	}
	return events, nil
}

// StubEvents are what dm-measure stub extends: the image tree below root
// ("/" in the guest), then the whole kernel command line (a boot loader's
// command line, which systemd-stub measures into PCR 12).
func StubEvents(root, cmdline string) ([]Event, error) {
	events, err := ImageTreeEvents(root)
	if err != nil {
		return nil, err
	}
	all := KernelCmdlineAll(cmdline)
	p, err := strings0(KindBootCommandLine, all)
	if err != nil {
		return nil, err
	}
	return append(events, newEvent(constants.PCRConfig, KindBootCommandLine, strings.Join(all, " "), p)), nil
}

// KernelCmdlineAll is every kernel command-line parameter, split like the
// kernel splits them (see KernelCmdline), dm.* included.
func KernelCmdlineAll(cmdline string) []string {
	var out []string
	isSpace := func(c byte) bool { return c == ' ' || (c >= '\t' && c <= '\r') || c == 0xa0 }
	for i := 0; i < len(cmdline); {
		for i < len(cmdline) && isSpace(cmdline[i]) {
			i++
		}
		start, quoted := i, false
		for ; i < len(cmdline) && (quoted || !isSpace(cmdline[i])); i++ {
			if cmdline[i] == '"' {
				quoted = !quoted
			}
		}
		if p := cmdline[start:i]; p != "" {
			out = append(out, p)
		}
	}
	return out
}

// passEnv are the variables of systemd's environment the daemon gets (every
// other is dropped): the socket hand-over's. PATH is replaced by DaemonEnv's.
var passEnv = []string{"LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"}

// ConfigEnv splits systemd's environment for the daemon (pid is the
// daemon's pid: dm-measure execs it in place) into what it runs with (run)
// and what is measured (measured). Both are DaemonEnv plus the allow-listed
// LISTEN_* variables, sorted; LISTEN_PID is measured by name only (its value
// is the daemon's own pid, different every boot), and the LISTEN_* set is
// dropped entirely when LISTEN_PID names another process (the sockets are
// not the daemon's). INVOCATION_ID, JOURNAL_STREAM, DISK_MAPPER_ARGS (the
// argv measures its effect) and anything else never reach the daemon.
func ConfigEnv(environ []string, pid int) (run, measured []string) {
	got := map[string]string{}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		for _, p := range passEnv {
			if k == p {
				got[k] = v
			}
		}
	}
	run = append(run, DaemonEnv...)
	measured = append(measured, DaemonEnv...)
	if lp, ok := got["LISTEN_PID"]; !ok || lp != strconv.Itoa(pid) {
		return run, measured
	}
	keys := make([]string, 0, len(got))
	for k := range got {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		run = append(run, k+"="+got[k])
		if k == "LISTEN_PID" {
			measured = append(measured, k)
		} else {
			measured = append(measured, k+"="+got[k])
		}
	}
	return run, measured
}

// ConfigBoot is what dm-measure boot-config measures before it execs the
// daemon: Argv as systemd expanded it, the measured form of the
// environment (ConfigEnv), the kernel command line (for its disk_mapper.*
// parameters), and the image root for /etc/disk-mapper and the
// environment file.
type ConfigBoot struct {
	Root    string
	Argv    []string
	Env     []string
	Cmdline string
}

// Events are the daemon's PCR 12 events, in order.
func (b ConfigBoot) Events() ([]Event, error) {
	if len(b.Argv) == 0 || !filepath.IsAbs(b.Argv[0]) {
		return nil, fmt.Errorf("measure: argv[0] must be the daemon's absolute path")
	}
	argv, err := strings0(KindArgv, b.Argv)
	if err != nil {
		return nil, err
	}
	env, err := strings0(KindEnvironment, b.Env)
	if err != nil {
		return nil, err
	}
	params := KernelParameters(b.Cmdline)
	kp, err := strings0(KindKernelParameters, params)
	if err != nil {
		return nil, err
	}
	events := []Event{
		newEvent(constants.PCRConfig, KindArgv, strings.Join(b.Argv, " "), argv),
		newEvent(constants.PCRConfig, KindEnvironment, strings.Join(b.Env, " "), env),
		newEvent(constants.PCRConfig, KindKernelParameters, strings.Join(params, " "), kp),
	}
	cfg, err := ConfigDirEvent(b.Root, constants.ConfigDir)
	if err != nil {
		return nil, err
	}
	envFile, err := EnvironmentFileEvent(b.Root, constants.EnvironmentFile)
	if err != nil {
		return nil, err
	}
	return append(events, cfg, envFile), nil
}

// EnvironmentFileArgs is what `ExecStart=… $DISK_MAPPER_ARGS` expands to
// for the image's environment file: the last DISK_MAPPER_ARGS= assignment,
// one level of quotes removed, split at whitespace (systemd's unquoted
// $VAR). The image's files are plain NAME=VALUE lines; nothing fancier
// (escapes, continuation lines) is supported here.
func EnvironmentFileArgs(root string) ([]string, error) {
	raw, err := os.ReadFile(filepath.Join(root, constants.EnvironmentFile))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var value string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "DISK_MAPPER_ARGS="); ok {
			if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
				v = v[1 : len(v)-1]
			}
			value = v
		}
	}
	return strings.Fields(value), sc.Err()
}

// SystemdImage is a built systemd test image: its cpio and the tree
// unpacked from it (what the measurements are computed from).
type SystemdImage struct {
	Initrd string
	Root   string
}

// ExpectedSystemdBoot are the events of a boot of img with the kernel
// command line cmdline; listen adds the socket hand-over's LISTEN_FDS=1.
func ExpectedSystemdBoot(img SystemdImage, cmdline string, listen bool) ([]Event, error) {
	stub, err := StubEvents(img.Root, cmdline)
	if err != nil {
		return nil, err
	}
	args, err := EnvironmentFileArgs(img.Root)
	if err != nil {
		return nil, err
	}
	environ := []string{}
	if listen {
		environ = append(environ, "LISTEN_FDS=1", "LISTEN_FDNAMES=disk-mapper-key.socket", "LISTEN_PID=1")
	}
	_, measured := ConfigEnv(environ, 1)
	cfg, err := ConfigBoot{Root: img.Root, Argv: append([]string{SystemdDaemonPath}, args...), Env: measured, Cmdline: cmdline}.Events()
	if err != nil {
		return nil, err
	}
	return append(stub, cfg...), nil
}
