package testutil

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
)

// Outcome is one row of a fault matrix. DataLost is computed by the case
// (bytes of protected content that changed or vanished), never written as a
// literal.
type Outcome struct {
	Case     string
	Expected string
	Got      string
	Survived bool
	DataLost int64
}

// Matrix collects the cases of a fault matrix (host faults, VM crashes) and
// prints them as `case | expected | got | survived | data lost` with totals.
type Matrix struct {
	Name     string // "fault matrix": the totals line
	Kind     string // "fault case": the per-case messages
	GotWidth int    // the got column is cut to this many bytes

	mu   sync.Mutex
	rows []Outcome
}

// Record adds a row and fails the test if the case did not survive or lost
// data, so the table and the test verdict never disagree.
func (m *Matrix) Record(t testing.TB, o Outcome) {
	t.Helper()
	m.mu.Lock()
	m.rows = append(m.rows, o)
	m.mu.Unlock()
	t.Logf("%s %q: expected %q, got %q, survived %v, data lost %d bytes", m.Kind, o.Case, o.Expected, o.Got, o.Survived, o.DataLost)
	if !o.Survived {
		t.Errorf("%s %q did not survive: expected %s, got %s", m.Kind, o.Case, o.Expected, o.Got)
	}
	if o.DataLost != 0 {
		t.Errorf("%s %q lost %d bytes of data", m.Kind, o.Case, o.DataLost)
	}
}

// Len is the number of recorded cases.
func (m *Matrix) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.rows)
}

// Print writes the table and its totals; it returns whether every case
// survived without data loss.
func (m *Matrix) Print(w io.Writer) bool {
	m.mu.Lock()
	rows := append([]Outcome(nil), m.rows...)
	m.mu.Unlock()
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
		fmt.Fprintf(tw, "%s\t| %s\t| %s\t| %v\t| %d\n", r.Case, r.Expected, m.oneLine(r.Got), r.Survived, r.DataLost)
	}
	tw.Flush()
	fmt.Fprintf(w, "%s: cases tried %d, cases survived %d, data lost %d bytes\n", m.Name, len(rows), survived, lost)
	return survived == len(rows) && lost == 0
}

func (m *Matrix) oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if m.GotWidth > 0 && len(s) > m.GotWidth {
		s = s[:m.GotWidth] + "…"
	}
	return s
}
