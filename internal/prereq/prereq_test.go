package prereq

import (
	"fmt"
	"strings"
	"testing"
)

// recordingTB notes how a test was stopped instead of stopping it.
type recordingTB struct {
	testing.TB
	fatal, skip string
}

func (r *recordingTB) Helper()                        {}
func (r *recordingTB) Fatalf(format string, a ...any) { r.fatal = fmt.Sprintf(format, a...) }
func (r *recordingTB) Skipf(format string, a ...any)  { r.skip = fmt.Sprintf(format, a...) }

func TestNeedToolFailsUnderCIAndSkipsElsewhere(t *testing.T) {
	const tool, pkg = "disk-mapper-no-such-tool", "no-such-package"
	for _, ci := range []string{"true", ""} {
		t.Setenv("CI", ci)
		r := &recordingTB{TB: t}
		NeedTool(r, tool, pkg)
		switch {
		case ci == "true" && (r.fatal == "" || r.skip != ""):
			t.Errorf("CI=true: fatal %q, skip %q; want a failure", r.fatal, r.skip)
		case ci == "" && (r.skip == "" || r.fatal != ""):
			t.Errorf("CI unset: fatal %q, skip %q; want a skip", r.fatal, r.skip)
		}
		if msg := r.fatal + r.skip; !strings.Contains(msg, tool) || !strings.Contains(msg, pkg) {
			t.Errorf("CI=%q: %q does not name the tool and its package", ci, msg)
		}
	}
	t.Setenv("CI", "true")
	r := &recordingTB{TB: t}
	if got := NeedTool(r, "sh", "dash"); got == "" || r.fatal != "" || r.skip != "" {
		t.Errorf("sh: path %q, fatal %q, skip %q", got, r.fatal, r.skip)
	}
}
