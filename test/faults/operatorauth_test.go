package faults

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/joinservice"
)

// Issue 9 item 6: when the image carries a cluster CA (--join-ca), a push to
// an EXISTING disk must come from an operator certificate of that CA, as for a
// blank disk. Otherwise the host builds an allow-list-compliant disk of its
// own, pushes its key, and the node runs on state the host wrote. The real
// daemon binary runs on the host against a file disk.

const acceptedLine = "Received state disk key and measurement secret, shutting down server"

// certOperatorCreds are dmctl's credentials with --client-cert/--client-key.
func certOperatorCreds(t *testing.T, certPEM, keyPEM []byte) credentials.TransportCredentials {
	t.Helper()
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := newLog(t, "operator")
	return atls.NewCredentials(atls.Config{Validator: attestation.NewDevValidator(log), Certificate: &cert, Log: log})
}

// hostDaemon starts the daemon on one of our initialized disks with extra
// flags; it returns the disk and its bytes before the daemon ran.
func hostDaemon(t *testing.T, extra ...string) (*daemon, ourDisk, []byte) {
	t.Helper()
	dir := t.TempDir()
	bin := buildDaemon(t, dir)
	d := newOurDisk(t, diskencryption.StateInitialized, anyKey(t))
	before := readAll(t, d.path)
	args := append([]string{"--state-disk=" + d.path, "--attestation=dev-insecure", "--recovery-addr=127.0.0.1:0",
		"--tpm-device=" + filepath.Join(dir, "no-tpm"), "--integrity=false", "--kernel-cmdline=/dev/null"}, extra...)
	return startDaemon(t, bin, dir, []string{"TMPDIR=" + dir}, nil, args...), d, before
}

func TestExistingDiskPushNeedsOperatorCertificate(t *testing.T) {
	cluster, err := joinservice.GenerateTestCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hostCA, err := joinservice.GenerateTestCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, cluster.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	dmd, d, before := hostDaemon(t, "--join-ca="+caFile)

	// The host knows the disk's key (it built the disk) but holds no
	// operator certificate of the cluster CA.
	_, noCertErr := pushKey(dmd.addr, operatorCreds(t, nil), randomKey(t), nil, d.key)
	_, otherCAErr := pushKey(dmd.addr, certOperatorCreds(t, hostCA.OperatorCertPEM, hostCA.OperatorKeyPEM), randomKey(t), nil, d.key)
	// The JoinService's own certificate is the cluster CA's, but for a server.
	_, serverCertErr := pushKey(dmd.addr, certOperatorCreds(t, cluster.CertPEM, cluster.KeyPEM), randomKey(t), nil, d.key)
	acceptedEarly := strings.Contains(dmd.stdout.String(), acceptedLine)
	// The operator's push, with the cluster's operator certificate.
	_, operatorErr := pushKey(dmd.addr, certOperatorCreds(t, cluster.OperatorCertPEM, cluster.OperatorKeyPEM), randomKey(t), nil, d.key)
	_ = dmd.wait(t) // on the host the activation after the key fails: no dm
	accepted := strings.Contains(dmd.stdout.String(), acceptedLine)

	got := fmt.Sprintf("no cert: %s; cert of another CA: %s; the CA's server cert: %s; key accepted before the operator: %v; operator's push: %s, accepted %v",
		code(noCertErr), code(otherCAErr), code(serverCertErr), acceptedEarly, code(operatorErr), accepted)
	survived := noCertErr != nil && otherCAErr != nil && serverCertErr != nil && !acceptedEarly && operatorErr == nil && accepted
	record(t, outcome{Case: "push to existing disk with --join-ca: no / foreign-CA / server / operator certificate",
		Expected: "only the cluster operator's push is taken", Got: got, Survived: survived,
		DataLost: changedBytes(before, readAll(t, d.path), headerRegion)})
}

func TestExistingDiskWithoutCASaysPushesAreUnauthenticated(t *testing.T) {
	dmd, d, before := hostDaemon(t)
	warned := dmd.stdout.count(`"event":"recovery_unauthenticated"`) == 1
	_, pushErr := pushKey(dmd.addr, operatorCreds(t, nil), randomKey(t), nil, d.key)
	_ = dmd.wait(t)
	accepted := strings.Contains(dmd.stdout.String(), acceptedLine)
	got := fmt.Sprintf("start warning %v; push without a certificate: %s, accepted %v", warned, code(pushErr), accepted)
	record(t, outcome{Case: "push to existing disk without --join-ca",
		Expected: "start line says pushes are unauthenticated; the key decides", Got: got,
		Survived: warned && pushErr == nil && accepted, DataLost: changedBytes(before, readAll(t, d.path), headerRegion)})
}
