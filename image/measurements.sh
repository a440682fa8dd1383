#!/usr/bin/env bash
# measurements.sh DISK_MAPPER [DM_MEASURE] — prints the image's expected PCR
# values as JSON: {"11":"<hex>","15":"<64 zeros>"}.
#
# The image's /init extends SHA-256(disk-mapper) into PCR 11 (zero at boot)
# before running it, so PCR 11 = SHA-256(0^32 || SHA-256(file)). PCR 15 must
# be zero while the node asks for keys (DESIGN.md §4, §6).
# When dm-measure is given, its -expected answer is cross-checked with the
# computation here: a mismatch means the guest and the build disagree.
set -euo pipefail
bin=${1:?usage: measurements.sh DISK_MAPPER [DM_MEASURE]}
measure=${2:-}

file_digest=$(sha256sum "$bin" | cut -d' ' -f1)
pcr11=$({ head -c 32 /dev/zero; echo "$file_digest" | busybox xxd -r -p; } | sha256sum | cut -d' ' -f1)

if [[ -n $measure && -x $measure ]]; then
	theirs=$("$measure" -expected -pcr 11 "$bin" 2>/dev/null | grep -oiE '\b[0-9a-f]{64}\b' | tail -n1 | tr A-F a-f || true)
	if [[ -z $theirs ]]; then
		echo "measurements: $measure -expected gave no digest; using the local computation" >&2
	elif [[ $theirs != "$pcr11" ]]; then
		echo "measurements: dm-measure says PCR 11 = $theirs, local computation says $pcr11" >&2
		exit 1
	fi
fi
printf '{"11":"%s","15":"%064d"}\n' "$pcr11" 0
