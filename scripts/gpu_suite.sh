#!/usr/bin/env bash
# The whole GPU suite in one command, for a GPU machine: build (Release), run every test (CPU, one-process
# GPU, multi-process GPU through tpcomm-launch), then every benchmark suite. Logs and JSON results go to
# $OUT (the device tool's folder) or ./gpu_out. Extra arguments are passed to tpcomm-bench.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUTDIR=${OUT:-gpu_out}
mkdir -p "$OUTDIR"
echo "== machine"; nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader; nvidia-smi topo -m 2>/dev/null | head -6
echo "== build"
tpcomm_gpu_build "$OUTDIR/build.log" || exit 1
echo "build ok"
echo "== tests"
(cd "$BUILD" && ctest --output-on-failure --timeout "${TPCOMM_TEST_TIMEOUT:-400}") > "$OUTDIR/tests.log" 2>&1
test_rc=$?
grep -E "tests passed|Passed|Failed|Skipped|FAILED|\[rank|rank [0-9]|Test #|mixed all-reduces" "$OUTDIR/tests.log" | head -60
if [ "${TPCOMM_SKIP_BENCH:-0}" != 1 ]; then
  echo "== bench"
  "$BUILD/tpcomm-bench" --out "$OUTDIR" "$@" > "$OUTDIR/bench.log" 2>&1
  bench_rc=$?
  grep -v "^  .* done$" "$OUTDIR/bench.log" | tail -80
  # Async TP (ag_gemm, gemm_rs: a loopback world of 2 ranks on a one-GPU machine, every GPU otherwise): verdicts.
  echo "== async TP"
  grep -E "^(ag_gemm|gemm_rs): |^(CHECK|REFERENCE) FAILED|^wrote .*async_tp|^rank 0 async-TP" "$OUTDIR/bench.log" | head -60
else
  bench_rc=0
fi
echo "tests rc=$test_rc bench rc=$bench_rc"
[ $test_rc -eq 0 ] && [ $bench_rc -eq 0 ]
