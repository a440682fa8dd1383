package faults

import (
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/testutil"
)

type outcome = testutil.Outcome

// matrix is the host fault matrix the suite prints.
var matrix = &testutil.Matrix{Name: "fault matrix", Kind: "fault case", GotWidth: 110}

func record(t *testing.T, o outcome) {
	t.Helper()
	matrix.Record(t, o)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if !report() && code == 0 {
		fmt.Println("FAIL: the fault matrix or the key-hygiene scan failed")
		code = 1
	}
	os.Exit(code)
}

// report prints the fault matrix and the key-hygiene scan, also to
// build/faults/report.txt so that `make test` can show it without -v. It
// returns whether every case survived with no key found.
func report() bool {
	fmt.Println()
	var out io.Writer = os.Stdout
	if err := os.MkdirAll("../../build/faults", 0o755); err == nil {
		if f, err := os.Create("../../build/faults/report.txt"); err == nil {
			defer f.Close()
			out = io.MultiWriter(os.Stdout, f)
		}
	}
	ok := matrix.Print(out)
	hits := scanLogsForKeys(out)
	return ok && hits == 0
}
