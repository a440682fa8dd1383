// Package integration is disk-mapper's QEMU + swtpm integration suite: the
// real daemon (--attestation=tpm) boots in the test image under TCG with a
// swtpm that the suite provisioned like a cloud (AK certificate from a
// platform CA in TPM NV), talks aTLS to a real JoinService and metadata
// server on 127.0.0.1 (reached only through slirp guestfwd, restrict=on), and
// takes pushed keys from the real dmctl binary.
//
// The scenarios (scenarios_test.go) follow DESIGN.md §4 and the seeds: first
// boot on a blank disk, rejoin, every JoinService dead and an operator
// recovery, a wrong key before the right one, quorum loss of three nodes,
// power-off, a deleted VM, power loss during the first format, and an
// integrity-protected disk. Each asserts on the guest's serial-console JSON
// lines and records timings, printed as a table at the end of the run (and
// written to build/integration/timings.txt).
//
// Every file but this one carries the build tag vmtest:
//
//	go test -tags vmtest -count=1 -p 1 ./test/integration/
package integration
