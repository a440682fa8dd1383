// Package prereq stops a test whose prerequisite (a tool, root) is missing:
// a skip on a developer's machine, a failure under CI.
package prereq

import (
	"os"
	"os/exec"
	"testing"
)

// UnderCI tells whether the tests run in CI (CI=true, as .ci/run sets it).
// There a missing prerequisite is an error: a green run must not hide tests
// that never ran.
func UnderCI() bool { return os.Getenv("CI") == "true" }

// Missing stops the test because a prerequisite is absent: it skips on a
// developer's machine and fails under CI, naming what to install.
func Missing(tb testing.TB, what, install string) {
	tb.Helper()
	if UnderCI() {
		tb.Fatalf("missing prerequisite under CI: %s (install: %s)", what, install)
		return // only a recording TB returns from Fatalf
	}
	tb.Skipf("%s not available (install: %s); under CI=true this fails", what, install)
}

// NeedTool returns the path of the executable name, or stops the test
// (Missing) naming the Debian package that provides it.
func NeedTool(tb testing.TB, name, debianPackage string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Missing(tb, name, "apt-get install "+debianPackage+" (scripts/install-deps.sh does)")
	}
	return path
}
