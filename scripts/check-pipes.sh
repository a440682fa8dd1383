#!/usr/bin/env bash
# check-pipes.sh [FILE…] — fails on a pipeline whose reader may exit before
# its writer is done (| head, | grep -q/-m/-l, | sed …q, | awk … exit).
# Under `set -o pipefail` the writer then dies of SIGPIPE (exit 141) now and
# then, depending on scheduling: the flake that broke `make image` 3 runs in
# 20. Capture the output first (x=$(cmd); grep -q … <<<"$x") or let the
# reader read to the end (awk … END { print }). shellcheck has no rule for it.
#
# Without arguments it checks every shell script and Makefile of the
# repository. `make lint` runs it; scripts/check-pipes_test.sh proves it
# catches each pattern.
set -euo pipefail
cd "$(dirname "$0")/.."
if (($# == 0)); then
	# check-pipes_test.sh holds the unsafe forms on purpose, as fixtures.
	mapfile -t files < <(git ls-files '*.sh' '*.mk' Makefile image/init .ci/run | grep -v '^scripts/check-pipes_test.sh$')
	set -- "${files[@]}"
fi
# A single | (not ||) followed by a reader that may stop reading early.
pattern='(?<![|])[|](?![|])\s*(head\b|grep\s+(-[A-Za-z]*[qlm]|--quiet|--max-count|--files-with)|sed\s+(-[a-zA-Z]+\s+)*'"'"'?[^|]*[0-9/]q\b|awk\b[^|]*\bexit\b)'
bad=0
for f in "$@"; do
	# Comment lines may mention the pattern.
	if hits=$(grep -nP "$pattern" "$f" | grep -vP '^\d+:\s*#'); then
		while IFS= read -r h; do
			echo "$f:$h: a pipeline reader that may exit early (SIGPIPE under pipefail)" >&2
		done <<<"$hits"
		bad=1
	fi
done
exit "$bad"
