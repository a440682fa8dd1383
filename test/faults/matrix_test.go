package faults

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
)

// outcome is one row of the fault matrix. DataLost is computed by the case
// (bytes of protected disk content that changed), never written as a literal.
type outcome struct {
	Case     string
	Expected string
	Got      string
	Survived bool
	DataLost int64
}

var matrix struct {
	mu   sync.Mutex
	rows []outcome
}

// record adds a row and fails the test if the case did not survive or lost
// data, so the table and the test verdict never disagree.
func record(t *testing.T, o outcome) {
	t.Helper()
	matrix.mu.Lock()
	matrix.rows = append(matrix.rows, o)
	matrix.mu.Unlock()
	t.Logf("fault case %q: expected %q, got %q, survived %v, data lost %d bytes", o.Case, o.Expected, o.Got, o.Survived, o.DataLost)
	if !o.Survived {
		t.Errorf("fault case %q did not survive: expected %s, got %s", o.Case, o.Expected, o.Got)
	}
	if o.DataLost != 0 {
		t.Errorf("fault case %q lost %d bytes of data", o.Case, o.DataLost)
	}
}

// printMatrix writes the table and its totals; it returns whether every case
// survived without data loss.
func printMatrix(w io.Writer) bool {
	matrix.mu.Lock()
	rows := append([]outcome(nil), matrix.rows...)
	matrix.mu.Unlock()
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Case < rows[j].Case })

	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "case\t| expected\t| got\t| survived\t| data lost")
	fmt.Fprintln(tw, "----\t| --------\t| ---\t| --------\t| ---------")
	survived, lost := 0, int64(0)
	for _, r := range rows {
		if r.Survived {
			survived++
		}
		lost += r.DataLost
		fmt.Fprintf(tw, "%s\t| %s\t| %s\t| %v\t| %d\n", r.Case, r.Expected, oneLine(r.Got), r.Survived, r.DataLost)
	}
	tw.Flush()
	fmt.Fprintf(w, "fault matrix: cases tried %d, cases survived %d, data lost %d bytes\n", len(rows), survived, lost)
	return survived == len(rows) && lost == 0
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 110 {
		s = s[:110] + "…"
	}
	return s
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
	ok := printMatrix(out)
	hits := scanLogsForKeys(out)
	return ok && hits == 0
}
