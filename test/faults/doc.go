// Package faults is the host-level fault matrix of disk-mapper: real LUKS2
// files (diskencryption), the real setup.Manager, the real RecoveryServer over
// real aTLS, the real RejoinClient against real gRPC/TLS servers on
// 127.0.0.1, and the daemon binary itself. Every case is a test; TestMain
// prints the matrix (case | expected | got | survived | data lost) and the
// key-hygiene scan of every log the suite produced. VM-level crash faults
// live in test/vmtest.
//
// Run: go test -v ./test/faults/ (without -v, go test shows a passing
// package's report only when run in the package directory).
package faults
