#!/usr/bin/env bash
# Runs every fuzz target for a short bounded time (default 15s each; set
# FUZZTIME to change it). Seed corpora live in <pkg>/testdata/fuzz/<Target>;
# a failing input found here is written there too (commit it with the fix).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
FUZZTIME=${FUZZTIME:-15s}

targets=(
  "./diskencryption FuzzVerifyMetadata"
  "./recoveryserver FuzzRecoverMessages"
  "./internal/attestation FuzzValidateDocument"
  "./rejoinclient/metadata FuzzEndpoints"
)

for t in "${targets[@]}"; do
  read -r pkg target <<<"$t"
  echo "== $pkg $target ($FUZZTIME)"
  go test "$pkg" -run "^${target}\$" -fuzz "^${target}\$" -fuzztime "$FUZZTIME"
done
