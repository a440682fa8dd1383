#!/usr/bin/env bash
# bench.sh — runs DESIGN.md §8's benchmarks COUNT times each (default 5),
# keeps the raw `go test -bench` output in build/bench/, and prints one table:
# each ratio's median and min–max beside its target, with the machine load.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-5}
out=build/bench
mkdir -p "$out"
rm -f "$out"/__*.txt "$out/table.txt" # not bench-vm's vm-*.txt
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# package | benchmark | -benchtime (samples per run)
while read -r pkg bench benchtime; do
	[[ -z $pkg || $pkg == \#* ]] && continue
	raw="$out/$(echo "$pkg$bench" | tr -c 'A-Za-z0-9\n' '_').txt"
	echo "bench: $pkg $bench (-count $count -benchtime $benchtime)" >&2
	go test -run '^$' -bench "^$bench\$" -benchtime "$benchtime" -count "$count" "$pkg" >"$raw" 2>&1 ||
		{ cat "$raw" >&2; exit 1; }
done <<'LIST'
./diskencryption BenchmarkCheckKey 1x
./rejoinclient BenchmarkTimeToKey 200x
./setup BenchmarkRaceStop 5x
./dmctl BenchmarkRecoverFiveVsOne 3x
./joinservice BenchmarkRejoinStorm 1x
./recoveryserver BenchmarkTimeToKeyUnderQuoteFlood 3x
LIST
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
go run ./scripts/benchtable -load "$load_before (before), $load_after (after)" "$out"/*.txt | tee "$out/table.txt"
