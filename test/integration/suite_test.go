//go:build vmtest

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/test/vmtest"
	"github.com/spf13/afero"
)

// suite is what every scenario shares: the binaries, the cluster's secrets
// and certificates, and the image with the JoinService CA in
// /etc/disk-mapper/ca.pem. It is built once per test binary.
type suite struct {
	dir string
	bin struct{ diskMapper, dmMeasure, dmctl, joinservice, metadata, tpmProvision string }

	masterSecret              string // the cluster's master-secret file
	wrongSecret               string // another cluster's: its keys open nothing here
	platformCA                string // certifies the (sw)TPMs' AKs: --ak-roots
	platformKey               string
	joinCert, joinKey         string // the JoinService's certificate, from the CA in the image
	operatorCert, operatorKey string // dmctl recover --client-cert/--client-key, from the same CA
	image                     vmtest.Image
	expectedPCR15             string // hex: what a node of this cluster shows after marking

	measurementsMu sync.Mutex
	measurements   map[string]string // kernel command line → its measurements file
}

var (
	suiteOnce sync.Once
	theSuite  *suite
	suiteErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	printTimings(os.Stdout)
	printCrashMatrix(os.Stdout)
	printKeyHygiene(os.Stdout)
	if theSuite != nil {
		os.RemoveAll(theSuite.dir)
	}
	os.Exit(code)
}

// getSuite builds the suite on first use (cached build/kernel, go build
// cache: a few seconds warm).
func getSuite(t *testing.T) *suite {
	t.Helper()
	suiteOnce.Do(func() {
		start := time.Now()
		theSuite, suiteErr = buildSuite(t)
		t.Logf("suite built in %v", time.Since(start).Round(time.Millisecond))
	})
	if suiteErr != nil {
		t.Fatalf("building the integration suite: %v", suiteErr)
	}
	return theSuite
}

func buildSuite(t *testing.T) (*suite, error) {
	root, err := vmtest.RepoRoot()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(root, "build"), 0o755); err != nil {
		return nil, err
	}
	// Not t.TempDir: the suite outlives the first test. TestMain removes it.
	dir, err := os.MkdirTemp(filepath.Join(root, "build"), "integration-run-")
	if err != nil {
		return nil, err
	}
	s := &suite{dir: dir, measurements: map[string]string{}}
	binDir := filepath.Join(dir, "bin")
	for _, b := range []struct {
		dst *string
		pkg string
		env []string
	}{
		{&s.bin.diskMapper, "./cmd/disk-mapper", nil}, // cgo: libcryptsetup
		{&s.bin.dmMeasure, "./cmd/dm-measure", []string{"CGO_ENABLED=0"}},
		{&s.bin.dmctl, "./cmd/dmctl", nil},
		{&s.bin.joinservice, "./cmd/joinservice", nil},
		{&s.bin.metadata, "./cmd/metadata", nil},
		{&s.bin.tpmProvision, "./cmd/tpm-provision", nil},
	} {
		*b.dst = filepath.Join(binDir, filepath.Base(b.pkg))
		if err := vmtest.BuildGo(t, b.pkg, *b.dst, b.env...); err != nil {
			return nil, err
		}
	}

	s.masterSecret = filepath.Join(dir, "master-secret.json")
	s.wrongSecret = filepath.Join(dir, "other-cluster-secret.json")
	for _, f := range []string{s.masterSecret, s.wrongSecret} {
		if err := runQuiet(s.bin.dmctl, "master-secret", "new", "--out", f); err != nil {
			return nil, err
		}
	}
	if err := runQuiet(s.bin.tpmProvision, "--new-ca", filepath.Join(dir, "platform")); err != nil {
		return nil, err
	}
	s.platformCA, s.platformKey = filepath.Join(dir, "platform", "ca.pem"), filepath.Join(dir, "platform", "ca-key.pem")
	joinDir := filepath.Join(dir, "join")
	if err := runQuiet(s.bin.joinservice, "gen-cert", "--dir", joinDir, "--hosts", "127.0.0.1,"+guestJoinIP); err != nil {
		return nil, err
	}
	s.joinCert, s.joinKey = filepath.Join(joinDir, "cert.pem"), filepath.Join(joinDir, "key.pem")
	// The image has a CA, so every push needs the operator's certificate.
	s.operatorCert, s.operatorKey = filepath.Join(joinDir, "operator-cert.pem"), filepath.Join(joinDir, "operator-key.pem")

	// The image trusts the JoinService CA: /etc/disk-mapper/ca.pem.
	configDir := filepath.Join(dir, "image-config")
	if err := os.MkdirAll(configDir, 0o755); err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(joinDir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(configDir, "ca.pem"), ca, 0o644); err != nil {
		return nil, err
	}
	if _, err := vmtest.FetchKernel(t); err != nil {
		return nil, err
	}
	s.image, err = vmtest.BuildInitrd(t, vmtest.ImageSpec{
		DiskMapper: s.bin.diskMapper, DMMeasure: s.bin.dmMeasure, ConfigDir: configDir,
		Params: bootCmdline(bootOpts{}), Out: filepath.Join(dir, "image", "initrd.cpio"),
	})
	if err != nil {
		return nil, err
	}
	// The image build and the harness compute the same values (one Go
	// implementation); a difference here is a broken build, not a test.
	genuine, err := s.measurementsFor(bootOpts{})
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(genuine)
	if err != nil {
		return nil, err
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil || !maps.Equal(m, s.image.Measurements) {
		return nil, fmt.Errorf("measurements.json of the image build %v, the harness computes %s (%v)", s.image.Measurements, raw, err)
	}

	s.expectedPCR15, err = expectedPCR15(s.masterSecret)
	return s, err
}

// measurementsFor is the measurements file (PCRs 11, 12, 15) a boot with o
// shows while it asks for keys: what a JoinService or dmctl that accepts
// exactly that boot's configuration is given. It is computed from the image
// tree and the boot's kernel command line with the code dm-measure runs in
// the guest, never written down by hand.
func (s *suite) measurementsFor(o bootOpts) (string, error) {
	return s.measurementsForCmdline(bootCmdline(o))
}

// measurementsForCmdline is the measurements file of a boot with exactly
// this kernel command line (beyond console, quiet, panic).
func (s *suite) measurementsForCmdline(cmdline []string) (string, error) {
	key := strings.Join(cmdline, " ")
	s.measurementsMu.Lock()
	defer s.measurementsMu.Unlock()
	if p, ok := s.measurements[key]; ok {
		return p, nil
	}
	m, err := s.image.Expected(cmdline)
	if err != nil {
		return "", err
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	p := filepath.Join(s.dir, fmt.Sprintf("measurements-%d.json", len(s.measurements)))
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		return "", err
	}
	s.measurements[key] = p
	return p, nil
}

func (s *suite) mustMeasurements(t *testing.T, o bootOpts) string {
	t.Helper()
	p, err := s.measurementsFor(o)
	if err != nil {
		t.Fatalf("expected measurements: %v", err)
	}
	return p
}

// expectedPCR15 is PCR 15 of a node of the cluster of secretPath after it
// marked itself: the cluster ID (from the measurement secret and salt, as the
// JoinService and dmctl derive them) extended into a zero PCR.
func expectedPCR15(secretPath string) (string, error) {
	secret, err := masterkey.Load(afero.NewOsFs(), secretPath)
	if err != nil {
		return "", err
	}
	defer func() { clear(secret.Key); clear(secret.Salt) }()
	ms, err := secret.MeasurementSecret()
	if err != nil {
		return "", err
	}
	defer clear(ms)
	salt, err := secret.MeasurementSalt()
	if err != nil {
		return "", err
	}
	id, err := masterkey.ClusterID(ms, salt)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", attestation.ExpectedPCR15(id)), nil
}

// provisionTPM plays the cloud for a new VM: its swtpm gets an AK
// certificate from the platform CA in NV, before the first boot.
func (s *suite) provisionTPM(ctx context.Context, t *testing.T, tpmDir string) {
	t.Helper()
	err := vmtest.ProvisionTPM(ctx, t, tpmDir, vmtest.ProvisionCommand(t,
		s.bin.tpmProvision, "--tpm", "{tpm}", "--ca-cert", s.platformCA, "--ca-key", s.platformKey))
	if err != nil {
		t.Fatalf("provisioning the TPM: %v", err)
	}
}

func runQuiet(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", filepath.Base(argv[0]), err, out)
	}
	return nil
}
