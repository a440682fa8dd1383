#!/usr/bin/env bash
# Runs every fuzz target for a bounded number of executions. Seed corpora
# live in <pkg>/testdata/fuzz/<Target>; a failing input found here is written
# there too (commit it with the fix).
#
# Budgets are execution counts (-fuzztime Nx), about 10 s each on a 2-core
# machine, not durations: with a duration, Go 1.26's fuzz coordinator can
# fail a target with a bare "context deadline exceeded" when the deadline
# fires while a worker is still busy (golang/go#75804, fixed in Go 1.27), and
# it did so in a clean-clone CI run here (FuzzValidateDocument, minimizing a
# new input at the 10 s mark). A count has no deadline to race; minimization
# is bounded by a count as well. FUZZTIME (e.g. 60s or 1000000x) overrides
# every budget for a longer local run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

# package | target | executions
targets=(
  "./diskencryption FuzzVerifyMetadata 150000x"
  "./recoveryserver FuzzRecoverMessages 40000x"
  "./internal/attestation FuzzValidateDocument 100000x"
  "./rejoinclient/metadata FuzzEndpoints 150000x"
)

for t in "${targets[@]}"; do
  read -r pkg target budget <<<"$t"
  budget=${FUZZTIME:-$budget}
  echo "== $pkg $target ($budget)"
  start=$(date +%s)
  go test "$pkg" -run "^${target}\$" -fuzz "^${target}\$" -fuzztime "$budget" -fuzzminimizetime 2000x
  echo "== $target: $(($(date +%s) - start)) s"
done
