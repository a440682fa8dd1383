// Package measure is the one implementation of what the test image measures
// before it runs the daemon (docs/pcr-map.md): dm-measure runs it in the
// guest to extend the PCRs, and the image build and the test harness run it
// on the host (dm-measure expected) to compute the values a genuine boot
// shows. Guest and expectations cannot drift apart because they share this
// code; the only logic outside it is the init's split of the kernel command
// line, which SplitCmdline mirrors (and a test holds the two together).
//
// # Events
//
// Each event is extended into its PCR as SHA-256(data) (the SHA-256 bank
// digest, like systemd-pcrphase's strings), where
//
//	data = "disk-mapper-measurement/v1" 0x00 kind 0x00 payload
//
// and every variable-length string in the payload is terminated by 0x00
// (none can contain one: they are paths, argv and environment strings), so
// two different inputs never encode alike. In the order extended:
//
//	PCR 11  file               "/init" 0x00 SHA-256(content)
//	PCR 11  file               argv[0] 0x00 SHA-256(content)   (the daemon binary)
//	PCR 12  argv               arg 0x00 …                      (argv[0] first: exactly what is executed)
//	PCR 12  environment        "K=V" 0x00 …                    (exactly what the daemon gets)
//	PCR 12  kernel-command-line param 0x00 …                   (every kernel parameter but dm.*, split like the kernel)
//	PCR 12  kernel-parameters  param 0x00 …                    (every disk_mapper.* field, split like the daemon)
//	PCR 12  config-dir         "/etc/disk-mapper" 0x00 entry…  (see ConfigDirEvent)
//	PCR 12  environment-file   "/etc/default/disk-mapper" 0x00 ['f' SHA-256(content)]
//
// After the daemon exited, before the init runs its test actions:
//
//	PCR 12  test-actions       action 0x00 …
package measure

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/constants"
)

// Event kinds.
const (
	KindFile             = "file"
	KindArgv             = "argv"
	KindEnvironment      = "environment"
	KindKernelCmdline    = "kernel-command-line"
	KindKernelParameters = "kernel-parameters"
	KindConfigDir        = "config-dir"
	KindEnvironmentFile  = "environment-file"
	KindTestActions      = "test-actions"
)

const eventMagic = "disk-mapper-measurement/v1"

// InitPath is the test image's init: it measures itself first, as
// systemd-stub's measurements start with what runs the measuring.
const InitPath = "/init"

// DaemonEnv is the whole environment the daemon runs with. Nothing of the
// init's own environment reaches it: the kernel hands every unrecognised
// NAME=VALUE parameter to init as an environment variable, so that
// environment is the host's (GODEBUG=, HTTPS_PROXY=, …).
var DaemonEnv = []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin"}

// Event is one measurement.
type Event struct {
	PCR  uint32
	Kind string
	// Desc says what was measured, for the log (paths, flags: nothing
	// secret is ever measured).
	Desc string
	Data []byte
}

// Digest is what is extended into the PCR.
func (e Event) Digest() []byte {
	d := sha256.Sum256(e.Data)
	return d[:]
}

func newEvent(pcr uint32, kind, desc string, payload []byte) Event {
	data := make([]byte, 0, len(eventMagic)+len(kind)+2+len(payload))
	data = append(data, eventMagic...)
	data = append(data, 0)
	data = append(data, kind...)
	data = append(data, 0)
	data = append(data, payload...)
	return Event{PCR: pcr, Kind: kind, Desc: desc, Data: data}
}

// strings0 encodes a list as s 0x00 s 0x00 …; a NUL inside one of them would
// make the encoding ambiguous, and no argv or environment can hold one.
func strings0(kind string, list []string) ([]byte, error) {
	var b bytes.Buffer
	for _, s := range list {
		if strings.IndexByte(s, 0) >= 0 {
			return nil, fmt.Errorf("%s: %q contains a NUL byte", kind, s)
		}
		b.WriteString(s)
		b.WriteByte(0)
	}
	return b.Bytes(), nil
}

// Boot is what the init is about to run: the inputs of one boot's
// measurements.
type Boot struct {
	// Root is the image's root: "/" in the guest, the staged image tree on
	// the host. Paths below are inside the image.
	Root string
	// Argv is the daemon's argv; Argv[0] is its path in the image.
	Argv []string
	// Env is the daemon's environment (DaemonEnv).
	Env []string
	// Cmdline is the kernel command line.
	Cmdline string
}

// Events are the measurements of b, in the order they are extended.
func (b Boot) Events() ([]Event, error) {
	if len(b.Argv) == 0 || !path.IsAbs(b.Argv[0]) {
		return nil, errors.New("measure: argv[0] must be the daemon's absolute path in the image")
	}
	var events []Event
	for _, p := range []string{InitPath, b.Argv[0]} {
		e, err := FileEvent(b.Root, p)
		if err != nil {
			return nil, err
		}
		events = append(events, e)
	}
	argv, err := strings0(KindArgv, b.Argv)
	if err != nil {
		return nil, err
	}
	env, err := strings0(KindEnvironment, b.Env)
	if err != nil {
		return nil, err
	}
	kernel := KernelCmdline(b.Cmdline)
	kc, err := strings0(KindKernelCmdline, kernel)
	if err != nil {
		return nil, err
	}
	params := KernelParameters(b.Cmdline)
	kp, err := strings0(KindKernelParameters, params)
	if err != nil {
		return nil, err
	}
	events = append(events,
		newEvent(constants.PCRConfig, KindArgv, strings.Join(b.Argv, " "), argv),
		newEvent(constants.PCRConfig, KindEnvironment, strings.Join(b.Env, " "), env),
		newEvent(constants.PCRConfig, KindKernelCmdline, strings.Join(kernel, " "), kc),
		newEvent(constants.PCRConfig, KindKernelParameters, strings.Join(params, " "), kp))
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

// TestActionsEvent is the measurement of the init's test actions, extended
// after the daemon exited and before they run.
func TestActionsEvent(actions []string) (Event, error) {
	p, err := strings0(KindTestActions, actions)
	if err != nil {
		return Event{}, err
	}
	return newEvent(constants.PCRConfig, KindTestActions, strings.Join(actions, " "), p), nil
}

// FileEvent measures the content of the image file p into PCR 11.
func FileEvent(root, p string) (Event, error) {
	d, err := fileDigest(filepath.Join(root, p))
	if err != nil {
		return Event{}, err
	}
	payload := append(append([]byte(p), 0), d...)
	return newEvent(constants.PCRImage, KindFile, p, payload), nil
}

// ConfigDirEvent measures every entry below the image directory dir into
// PCR 12: names, types and contents, so adding, removing, renaming or
// changing any file changes the value. Entries are sorted by their path
// relative to dir (byte order; "." is dir itself), each encoded as
//
//	'd' rel 0x00                      a directory
//	'f' rel 0x00 SHA-256(content)     a regular file
//	'l' rel 0x00 target 0x00          a symbolic link (not followed)
//
// An absent dir has no entries; an empty one has 'd' "." 0x00. Anything
// else (devices, sockets, FIFOs) is refused: it has no content to measure.
func ConfigDirEvent(root, dir string) (Event, error) {
	payload, n, err := treePayload(root, dir, nil, true)
	if err != nil {
		return Event{}, err
	}
	desc := fmt.Sprintf("%s (%d entries)", dir, n)
	return newEvent(constants.PCRConfig, KindConfigDir, desc, payload), nil
}

// treePayload is dir 0x00 followed by every entry below root+dir (sorted
// by relative path; 'd'/'f'/'l' as in ConfigDirEvent), but those in skip.
// With absentOK a missing dir has no entries; otherwise it is an error.
func treePayload(root, dir string, skip map[string]bool, absentOK bool) ([]byte, int, error) {
	type entry struct {
		rel  string
		data []byte
	}
	var entries []entry
	base := filepath.Join(root, dir)
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if absentOK && p == base && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		rel, err := filepath.Rel(base, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if skip[path.Join(dir, rel)] {
			return nil
		}
		if strings.IndexByte(rel, 0) >= 0 {
			return fmt.Errorf("%s: NUL in a file name", p)
		}
		var e []byte
		switch t := d.Type(); {
		case t.IsDir():
			e = append(append([]byte{'d'}, rel...), 0)
		case t.IsRegular():
			h, err := fileDigest(p)
			if err != nil {
				return err
			}
			e = append(append(append([]byte{'f'}, rel...), 0), h...)
		case t&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e = append(append(append(append([]byte{'l'}, rel...), 0), target...), 0)
		default:
			return fmt.Errorf("measure: %s is a %v, not a file, directory or symlink", p, t)
		}
		entries = append(entries, entry{rel, e})
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("measuring %s: %w", dir, err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].rel < entries[j].rel })
	payload := append([]byte(dir), 0)
	for _, e := range entries {
		payload = append(payload, e.data...)
	}
	return payload, len(entries), nil
}

// EnvironmentFileEvent measures the image file p (the systemd unit's
// EnvironmentFile) into PCR 12: present with its content, or absent.
func EnvironmentFileEvent(root, p string) (Event, error) {
	payload := append([]byte(p), 0)
	desc := p + " (absent)"
	d, err := fileDigest(filepath.Join(root, p))
	switch {
	case err == nil:
		payload = append(append(payload, 'f'), d...)
		desc = p
	case !errors.Is(err, fs.ErrNotExist):
		return Event{}, err
	}
	return newEvent(constants.PCRConfig, KindEnvironmentFile, desc, payload), nil
}

// KernelCmdline are the kernel command line's parameters, split the way
// the kernel splits them (lib/cmdline.c next_arg: at its isspace bytes,
// not inside double quotes, quotes kept), without the dm.* ones: those
// reach the daemon only as argv (measured as such) or are test actions.
// The exception are the init's setup keys (SetupKeys, e.g. dm.disk-alias=):
// they run before the daemon and decide what it opens, so they stay here.
// What is left steers the kernel under the genuine daemon: kgdboc=ttyS0
// (a debugger on the host's serial port, with the disk key in memory),
// module_blacklist=, dm_mod.create=, sysrq_always_enabled, …
func KernelCmdline(cmdline string) []string {
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
		if p := cmdline[start:i]; p != "" && (!strings.HasPrefix(p, "dm.") || isSetupParam(p)) {
			out = append(out, p)
		}
	}
	return out
}

// KernelParameters are the fields of the kernel command line the daemon
// reads itself (constants.KernelCmdlinePrefix), split the way the daemon
// splits it, in command-line order.
func KernelParameters(cmdline string) []string {
	var out []string
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, constants.KernelCmdlinePrefix) {
			out = append(out, f)
		}
	}
	return out
}

// TestActionKeys are the dm.KEY=… parameters the init runs itself after the
// daemon (image/init); SetupKeys the ones it runs before the daemon; every
// other dm.* parameter becomes a daemon flag.
var (
	TestActionKeys = []string{"write", "read", "get", "pcr", "rawbench"}
	// SetupKeys are test-only too: dm.disk-alias=LINK:TARGET[:DELAY] gives
	// the VM's disk a cloud's name (docs/providers.md). What the daemon then
	// opens depends on them, so KernelCmdline keeps them (PCR 12).
	SetupKeys = []string{"disk-alias"}
)

// isSetupParam: p is dm.KEY=… with KEY one of SetupKeys.
func isSetupParam(p string) bool {
	rest, ok := strings.CutPrefix(p, "dm.")
	return ok && hasKeyPrefix(rest, SetupKeys)
}

func hasKeyPrefix(rest string, keys []string) bool {
	for _, k := range keys {
		if strings.HasPrefix(rest, k+"=") {
			return true
		}
	}
	return false
}

// SplitCmdline is the init's split of a kernel command line (image/init,
// between "BEGIN split_cmdline" and "END split_cmdline"): fields split at
// spaces, tabs and newlines (the shell's IFS, no globbing); dm.KEY=VALUE
// becomes --KEY=VALUE and dm.KEY becomes --KEY, except the test actions,
// returned as KEY=VALUE, and the setup keys, which are neither.
func SplitCmdline(cmdline string) (flags, actions []string) {
	fields := strings.FieldsFunc(cmdline, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' })
	for _, a := range fields {
		rest, ok := strings.CutPrefix(a, "dm.")
		if !ok {
			continue
		}
		switch {
		case hasKeyPrefix(rest, SetupKeys):
			// run by the init before the daemon; measured with the kernel command line
		case hasKeyPrefix(rest, TestActionKeys):
			actions = append(actions, rest)
		default:
			flags = append(flags, "--"+rest)
		}
	}
	return flags, actions
}

// DaemonPath is the daemon's path in the test image.
const DaemonPath = "/bin/disk-mapper"

// ExpectedBoot is the Boot the init runs for a kernel command line:
// DaemonPath with the command line's flags, DaemonEnv, image root root.
func ExpectedBoot(root, cmdline string) Boot {
	flags, _ := SplitCmdline(cmdline)
	return Boot{Root: root, Argv: append([]string{DaemonPath}, flags...), Env: DaemonEnv, Cmdline: cmdline}
}

// Expected replays events into PCRs that start at zero and returns the
// values a validator must see while the node asks for keys: every PCR of
// the map's required set (11, 12 and 15, the latter zero).
func Expected(events []Event) attestation.Measurements {
	digests := map[uint32][][]byte{}
	for _, e := range events {
		digests[e.PCR] = append(digests[e.PCR], e.Digest())
	}
	m := attestation.Measurements{}
	for _, p := range constants.RequiredPCRs() {
		if p == constants.PCRClusterID {
			m[p] = make([]byte, sha256.Size)
			continue
		}
		m[p] = attestation.ExtendedValue(digests[p]...)
	}
	return m
}

// Hex is a digest in lowercase hex, for logs.
func Hex(b []byte) string { return hex.EncodeToString(b) }

func fileDigest(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	return h.Sum(nil), nil
}
