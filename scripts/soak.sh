#!/usr/bin/env bash
# The full soak on one GPU: the quantize soak (tests/quantize/quant_soak_gpu_test.cu) and the all-reduce soak on a
# loopback world (tests/collectives/all_reduce_soak_loopback_gpu_test.cu), 10^5 calls each by default, settings
# changing every call, results checked every N calls against the CPU reference, device memory measured. The test
# binary runs them shortened (2000 calls); this script sets the length.
#
#   bash scripts/soak.sh                          build tpcomm_gpu_tests (Release, $TPCOMM_BUILD_DIR or build-gpu), run
#   TPCOMM_SOAK_CALLS=100000                      calls per soak (per rank on the loopback world)
#   TPCOMM_SOAK_CHECK_EVERY=50                    N
#   SOAK_WORLDS="2 4"                             loopback world sizes (one all-reduce soak each; default 2)
#   SOAK_TIMEOUT_S=500                            limit of each soak run
#   SOAK_SKIP_BUILD=1                             use the existing binary
# Output: $OUT (or gpu_out/) soak.log: each run's verdict and "[ soak ]" line, then the full test output.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUTDIR=${OUT:-gpu_out}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/soak.log"
WORK=$(mktemp -d)
export TPCOMM_SOAK_CALLS=${TPCOMM_SOAK_CALLS:-100000}
export TPCOMM_SOAK_CHECK_EVERY=${TPCOMM_SOAK_CHECK_EVERY:-50}
T0=$(date +%s)
if [ "${SOAK_SKIP_BUILD:-0}" != 1 ]; then
  tpcomm_gpu_build "$WORK/build.log" tpcomm_gpu_tests || exit 1
  echo "build $(( $(date +%s) - T0 )) s"
fi
BIN="$BUILD/tests/tpcomm_gpu_tests"
{
  echo "# soak (scripts/soak.sh): TPCOMM_SOAK_CALLS=$TPCOMM_SOAK_CALLS TPCOMM_SOAK_CHECK_EVERY=$TPCOMM_SOAK_CHECK_EVERY"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ) commit: ${TPCOMM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
} > "$LOG"
rc=0
run() {  # name filter [ENV=V ...]
  local name=$1 filter=$2
  shift 2
  local t r
  t=$(date +%s)
  env "$@" timeout -k 10 "${SOAK_TIMEOUT_S:-500}" "$BIN" --gtest_filter="$filter" > "$WORK/$name.out" 2>&1
  r=$?
  local verdict=ok
  [ $r -eq 124 ] || [ $r -eq 137 ] && verdict="TIMEOUT (hang or too slow)"
  [ $r -eq 77 ] && verdict="skipped (no CUDA device)"
  [ $r -ne 0 ] && [ "$verdict" = ok ] && verdict="FAILED (rc $r)"
  [ "$verdict" = ok ] || rc=1
  { echo "== $name ($(( $(date +%s) - t )) s): $verdict"; grep -E '^\[ soak' "$WORK/$name.out"
    [ "$verdict" = ok ] || grep -E 'Failure|FAILED|Expected|Which is|rank|threw' "$WORK/$name.out" | head -30; } >> "$LOG"
  tail -1 "$LOG"
}
run quantize 'QuantSoak.*'
for w in ${SOAK_WORLDS:-2}; do
  run "all_reduce_loopback_w$w" 'AllReduceSoakLoopback.*' TPCOMM_SOAK_WORLD="$w"
done
echo "result: $([ $rc -eq 0 ] && echo PASSED || echo FAILED) ($(( $(date +%s) - T0 )) s)" >> "$LOG"
for f in "$WORK"/*.out; do { echo; echo "---- $(basename "$f" .out): test output"; cat "$f"; } >> "$LOG"; done
cat "$LOG"
exit $rc
