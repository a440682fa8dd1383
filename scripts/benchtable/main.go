// Command benchtable prints DESIGN.md §8's ratios from raw `go test -bench`
// output: for each target, the median and min–max of its metric over every
// run (-count), beside the target and the machine load.
//
//	go run ./scripts/benchtable -load "0.52 0.61 0.70" build/bench/*.txt
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// target is one row of the table: the benchmark lines whose name matches
// bench, their metric, and the bound it must keep.
type target struct {
	label  string
	bench  *regexp.Regexp
	metric string
	atMost bool // true: ≤ bound; false: ≥ bound
	bound  float64
}

var targets = []target{
	{"keyslot open ÷ Argon2id", regexp.MustCompile(`^BenchmarkCheckKey$`), "ours/argon2id", true, 0.01},
	{"time to key, 1 dead + healthy ÷ healthy", regexp.MustCompile(`^BenchmarkTimeToKey/1dead\+1healthy/random$`), "ratio", true, 1.5},
	{"time to key, 2 dead + healthy ÷ healthy", regexp.MustCompile(`^BenchmarkTimeToKey/2dead\+1healthy/random$`), "ratio", true, 1.5},
	{"time to key, 5 dead + healthy ÷ healthy", regexp.MustCompile(`^BenchmarkTimeToKey/5dead\+1healthy/random$`), "ratio", true, 1.5},
	{"time to key, 5 dead first + healthy ÷ healthy", regexp.MustCompile(`^BenchmarkTimeToKey/5dead\+1healthy/last$`), "ratio", true, 1.5},
	{"key accepted → loser stopped, rejoin wins (ms, worst)", regexp.MustCompile(`^BenchmarkRaceStop/rejoin-wins$`), "ms-to-stop-max", true, 100},
	{"key accepted → loser stopped, recovery wins (ms, worst)", regexp.MustCompile(`^BenchmarkRaceStop/recovery-wins$`), "ms-to-stop-max", true, 100},
	{"dmctl recover 5 nodes ÷ 1 (20 ms quotes)", regexp.MustCompile(`^BenchmarkRecoverFiveVsOne/quote=20ms$`), "5÷1", true, 1.5},
	{"1,000-node storm ÷ ideal (aTLS)", regexp.MustCompile(`^BenchmarkRejoinStorm/atls/`), "total/ideal", true, 1.3},
	{"1,000-node storm ÷ ideal (20 ms service)", regexp.MustCompile(`^BenchmarkRejoinStorm/insecure/N=1000/cap=10/service=20ms$`), "total/ideal", true, 1.3},
	// The service's busy span (first admission → last answer) ÷ ideal: the
	// same storm without the time 1,000 simulated nodes need to start on
	// this machine's 2 cores (each a separate machine in a real cluster).
	{"  … its busy span ÷ ideal (aTLS)", regexp.MustCompile(`^BenchmarkRejoinStorm/atls/`), "span/ideal", true, 1.3},
	{"  … its busy span ÷ ideal (20 ms service)", regexp.MustCompile(`^BenchmarkRejoinStorm/insecure/N=1000/cap=10/service=20ms$`), "span/ideal", true, 1.3},
	{"time to key, 200-conn flood ÷ without (caps lifted)", regexp.MustCompile(`^BenchmarkTimeToKeyUnderQuoteFlood/caps-lifted$`), "flood/base", true, 1.5},
	{"time to key, 200-conn flood ÷ without (defaults)", regexp.MustCompile(`^BenchmarkTimeToKeyUnderQuoteFlood/defaults$`), "flood/base", true, 1.5},
	{"Serve stop under the flood (ms, caps lifted)", regexp.MustCompile(`^BenchmarkTimeToKeyUnderQuoteFlood/caps-lifted$`), "stop-ms", true, 500},
}

// gomaxprocsSuffix is the "-2" go test appends to a benchmark name.
var gomaxprocsSuffix = regexp.MustCompile(`-\d+$`)

// parse collects metric values per benchmark name (without the suffix).
func parse(r io.Reader, into map[string]map[string][]float64) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue // not a result line
		}
		name := gomaxprocsSuffix.ReplaceAllString(f[0], "")
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			if into[name] == nil {
				into[name] = map[string][]float64{}
			}
			into[name][f[i+1]] = append(into[name][f[i+1]], v)
		}
	}
	return sc.Err()
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// row is what the table prints for one target.
type row struct {
	label, verdict string
	runs           int
	med, lo, hi    float64
	bound          string
}

func evaluate(t target, results map[string]map[string][]float64) row {
	var vals []float64
	for name, metrics := range results {
		if t.bench.MatchString(name) {
			vals = append(vals, metrics[t.metric]...)
		}
	}
	cmp := "≥"
	if t.atMost {
		cmp = "≤"
	}
	r := row{label: t.label, runs: len(vals), bound: fmt.Sprintf("%s %g", cmp, t.bound)}
	if len(vals) == 0 {
		r.verdict = "NOT RUN"
		return r
	}
	sort.Float64s(vals)
	r.med, r.lo, r.hi = median(vals), vals[0], vals[len(vals)-1]
	worst := r.hi
	if !t.atMost {
		worst = r.lo
	}
	switch {
	case (t.atMost && worst <= t.bound) || (!t.atMost && worst >= t.bound):
		r.verdict = "ok on every run"
	case (t.atMost && r.med <= t.bound) || (!t.atMost && r.med >= t.bound):
		r.verdict = "MEDIAN ok, some runs miss"
	default:
		r.verdict = "MISSED"
	}
	return r
}

func main() {
	load := flag.String("load", "", "the machine load to print (e.g. /proc/loadavg before the runs)")
	flag.Parse()
	results := map[string]map[string][]float64{}
	for _, path := range flag.Args() {
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		err = parse(f, results)
		f.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	fmt.Printf("\nbenchmark ratios (DESIGN.md §8); load average %s\n\n", *load)
	fmt.Printf("%-58s | %5s | %10s | %21s | %8s | %s\n", "target", "runs", "median", "min – max", "bound", "verdict")
	fmt.Printf("%s\n", strings.Repeat("-", 130))
	for _, t := range targets {
		r := evaluate(t, results)
		if r.runs == 0 {
			fmt.Printf("%-58s | %5d | %10s | %21s | %8s | %s\n", r.label, 0, "-", "-", r.bound, r.verdict)
			continue
		}
		fmt.Printf("%-58s | %5d | %10.4g | %10.4g – %-8.4g | %8s | %s\n", r.label, r.runs, r.med, r.lo, r.hi, r.bound, r.verdict)
	}
}
