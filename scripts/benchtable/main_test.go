package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkCheckKey-2     	       1	2100000000 ns/op	      6100 µs-ours	      2100 ms-argon2id	         0.003000 ours/argon2id
--- BENCH: BenchmarkCheckKey-2
    bench_test.go:20: argon2id format (with libcryptsetup's PBKDF benchmark) took 6s
BenchmarkCheckKey-2     	       1	2100000000 ns/op	      4200 µs-ours	      2100 ms-argon2id	         0.002000 ours/argon2id
BenchmarkCheckKey-2     	       1	2100000000 ns/op	     42000 µs-ours	      2100 ms-argon2id	         0.020000 ours/argon2id
BenchmarkTimeToKey/5dead+1healthy/random-2 	      10	  400000 ns/op	 2.0 ratio	 1.1 p50-ratio
PASS
`

func TestEvaluateTakesMedianAndWorstRun(t *testing.T) {
	results := map[string]map[string][]float64{}
	if err := parse(strings.NewReader(sample), results); err != nil {
		t.Fatal(err)
	}
	r := evaluate(targets[0], results)
	if r.runs != 3 || r.med != 0.003 || r.lo != 0.002 || r.hi != 0.02 {
		t.Fatalf("keyslot row: %+v", r)
	}
	if r.verdict != "MEDIAN ok, some runs miss" {
		t.Errorf("verdict %q: the median keeps the bound, the worst run does not", r.verdict)
	}
	five := evaluate(targets[3], results)
	if five.runs != 1 || five.med != 2.0 || five.verdict != "MISSED" {
		t.Errorf("5-dead row: %+v", five)
	}
	if none := evaluate(targets[len(targets)-1], results); none.verdict != "NOT RUN" {
		t.Errorf("a benchmark without results: %+v", none)
	}
}
