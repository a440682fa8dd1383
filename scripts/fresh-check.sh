#!/usr/bin/env bash
# fresh-check.sh [TARGET] — clones this repository's HEAD into a temporary
# directory (with ../shared beside it, as CI has) and runs `make TARGET`
# (default demo) there, as a new user would; prints the time it took.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-demo}
tmp=$(mktemp -d /tmp/disk-mapper-fresh.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
git clone -q "$root" "$tmp/main"
[[ -d $root/../shared ]] && ln -s "$(cd "$root/../shared" && pwd)" "$tmp/shared"
start=$(date +%s)
rc=0
(cd "$tmp/main" && make "$target") || rc=$?
echo "fresh-check: make $target in a fresh clone of $(git -C "$root" rev-parse --short HEAD): exit $rc after $(($(date +%s) - start)) s"
exit "$rc"
