#!/usr/bin/env bash
# measurements.sh DM_MEASURE IMAGE_ROOT [CMDLINE] — prints the expected PCR
# values of a boot of the image tree IMAGE_ROOT with the kernel command line
# CMDLINE (console=…, the daemon's dm.<flag>=<value> parameters; test
# actions make no difference) as measurements JSON:
# {"11":"<hex>","12":"<hex>","15":"<64 zeros>"} (docs/pcr-map.md).
#
# The values come from `dm-measure expected`, the same code (internal/measure)
# that measures the boot in the guest, so the build and the guest cannot
# disagree on the encoding. Another command line (one flag more, one
# changed) gives another PCR 12: compute its values with the same command.
set -euo pipefail
measure=${1:?usage: measurements.sh DM_MEASURE IMAGE_ROOT [CMDLINE]}
root=${2:?usage: measurements.sh DM_MEASURE IMAGE_ROOT [CMDLINE]}
params=${3:-}

[[ -x $measure ]] || { echo "measurements: $measure is not executable" >&2; exit 1; }
json=$("$measure" expected -root "$root" -cmdline "$params")
# Validators refuse a file without the map's PCRs (11, 12, 15): fail here first.
for pcr in 11 12 15; do
	grep -q "\"$pcr\":\"[0-9a-f]\{64\}\"" <<<"$json" || { echo "measurements: no PCR $pcr in $json" >&2; exit 1; }
done
printf '%s\n' "$json"
