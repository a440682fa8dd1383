#!/usr/bin/env bash
# check-reproducible.sh DISK_MAPPER DM_MEASURE ENV_FILE — builds the systemd
# image twice from the same inputs and fails unless the cpios are identical.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d "$repo/build/.repro.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for i in 1 2; do
	"$here/build.sh" -d "$1" -m "$2" -e "$3" -o "$tmp/$i/initrd.cpio"
done
a=$(sha256sum <"$tmp/1/initrd.cpio") b=$(sha256sum <"$tmp/2/initrd.cpio")
[[ $a == "$b" ]] || { echo "image-systemd: NOT reproducible: ${a%% *} vs ${b%% *}" >&2; exit 1; }
echo "image-systemd: reproducible: two builds, sha256 ${a%% *}"
