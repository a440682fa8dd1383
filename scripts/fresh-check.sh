#!/usr/bin/env bash
# fresh-check.sh [TARGET] — clones this repository's HEAD into a temporary
# directory (with ../shared beside it, as CI has) and runs `make TARGET`
# (default demo) there, as a new user would: no build/ directory (so the
# guest kernel is fetched and every image is built anew), and an empty Go
# build cache and module cache (modules come from the proxy again). Prints
# the time it took; FRESH_KEEP_GO_CACHES=1 keeps the caller's Go caches.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-demo}
tmp=$(mktemp -d /tmp/disk-mapper-fresh.XXXXXX)
cleanup() {
	chmod -R u+w "$tmp" 2>/dev/null || true # the module cache is read-only
	rm -rf "$tmp"
}
trap cleanup EXIT
git clone -q "$root" "$tmp/main"
[[ -d $root/../shared ]] && ln -s "$(cd "$root/../shared" && pwd)" "$tmp/shared"
if [[ ${FRESH_KEEP_GO_CACHES:-0} != 1 ]]; then
	export GOCACHE=$tmp/go-build GOMODCACHE=$tmp/go-mod
fi
start=$(date +%s)
rc=0
(cd "$tmp/main" && make "$target") || rc=$?
echo "fresh-check: make $target in a fresh clone of $(git -C "$root" rev-parse --short HEAD) (GOCACHE=${GOCACHE:-default}): exit $rc after $(($(date +%s) - start)) s"
exit "$rc"
