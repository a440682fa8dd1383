// Package testutil holds test helpers that several packages' tests share:
// a concurrent log sink with JSON line parsing, self-signed TLS credentials
// for 127.0.0.1, the encodings a leaked key could take, LUKS2 test disks on
// sparse files, and swtpm attestation keys. It is imported only by _test.go
// files; production code must not depend on it.
package testutil
