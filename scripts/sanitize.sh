#!/usr/bin/env bash
# compute-sanitizer over the one-GPU test suites: memcheck, racecheck, synccheck and initcheck, each over the
# quantize suites and over the loopback-world / async-TP suites, with a gtest filter per run so that everything fits
# one device call. Fails (exit 1) on any sanitizer report (--error-exitcode, and any racecheck hazard, warnings
# included), on any failing test, and on any run cut short by its time limit or the deadline.
#
#   bash scripts/sanitize.sh                 build tpcomm_gpu_tests (Release, $TPCOMM_BUILD_DIR or build-gpu), run all
#   SANITIZE_ONLY=racecheck,memcheck ...     only these tools
#   SANITIZE_DEADLINE_S=460                  wall-clock budget from the start, build included (runs past it: not run)
#   SANITIZE_SKIP_BUILD=1                    use the existing $BUILD/tests/tpcomm_gpu_tests
#   SANITIZE_FILTER_<TOOL>_<GROUP>=...       replace one run's gtest filter (e.g. SANITIZE_FILTER_RACECHECK_QUANT)
#
# Output: $OUT (or gpu_out/) gets sanitizer.log (the summary: machine, versions, one line per run, the tail of each
# failing run) and sanitizer_logs.tgz (every run's full log); the summary is also written to
# bench/results/nvidia-h200/sanitizer.log.
#
# Runs (priority order; a filter that matches no test runs nothing and passes):
#   racecheck quant      FP8 quantize (every colwise form the defaults reach: cluster W=64 with and without
#                        registers, transposed), edge groups and odd shapes of every kernel family, amax, bad input.
#                        Racecheck is the slow tool (every shared-memory access is tracked), so this is the
#                        representative subset, not QuantGpu.* whole.
#   racecheck fp8_*      QuantGpu.Fp8Quantize* again with the one-pass form forced at W=32 + 4 register rows, W=64
#                        + 4 register rows and W=128: the other instantiations of fp8_colwise_cluster_kernel.
#   memcheck quant       every quantize GPU suite (soak excluded: scripts/soak.sh), stream ops
#   synccheck quant, initcheck quant   the same less the two largest tests and the cuBLASLt GEMM test
#   <tool> loopback      *Loopback* (all-reduce, FP8 wire, symmetric memory on a loopback world), AsyncTp*, Native*,
#                        AllReduceBadInput* (soak excluded)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
T0=$(date +%s)
OUTDIR=${OUT:-gpu_out}
mkdir -p "$OUTDIR"
WORK=$(mktemp -d)
SUMMARY="$WORK/sanitizer.log"
DEADLINE=${SANITIZE_DEADLINE_S:-460}

CS=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [ -z "$CS" ] && [ -x "$c" ] && CS=$c
done
if [ -z "$CS" ]; then echo "compute-sanitizer not found"; exit 1; fi

{
  echo "# compute-sanitizer over the one-GPU suites (scripts/sanitize.sh)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: ${TPCOMM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  echo "sanitizer: $("$CS" --version 2>/dev/null | grep -i version | head -1)"
} > "$SUMMARY"

if [ "${SANITIZE_SKIP_BUILD:-0}" != 1 ]; then
  tpcomm_gpu_build "$WORK/build.log" tpcomm_gpu_tests || { cat "$SUMMARY"; exit 1; }
  echo "build $(( $(date +%s) - T0 )) s" | tee -a "$SUMMARY"
fi
BIN="$BUILD/tests/tpcomm_gpu_tests"
[ -x "$BIN" ] || { echo "no $BIN"; exit 1; }

# Device-side waits are far slower under the sanitizer: give the cross-rank waits room before they time out.
export TPCOMM_TIMEOUT_S=${TPCOMM_TIMEOUT_S:-120}

QUANT_ALL='QuantGpu*:QuantBadInput*:QuantGemmGpu*:StreamOps*:SingleProcess*:-*Soak*'
# synccheck / initcheck: without the two largest quantize tests (their shapes add time, not kernels) and without
# cuBLASLt's GEMMs (QuantGemmGpu: library kernels).
QUANT_LIGHT='QuantGpu*:QuantBadInput*:StreamOps*:-*Soak*:QuantGpu.TileKernelsWithSeveralTilesPerBlock:QuantGpu.Mxfp8QuantizeMatchesReference'
LOOPBACK='*Loopback*:AsyncTp*:Native*:AllReduceBadInput*:-*Soak*'
RACE_QUANT='QuantGpu.Fp8Quantize*:QuantGpu.*DeterministicEdgeGroups:QuantGpu.*AcceptedOddShapes:QuantGpu.ComputeAmax:QuantGpu.Mxfp8DequantizeMatchesReference:QuantGpu.Nvfp4*MatchesReference:QuantBadInput*'
FORCED=TPCOMM_QUANT_FP8_COLWISE=cluster

# tool group filter limit_s [ENV=V ...]
RUNS=(
  "racecheck quant $RACE_QUANT 90"
  "racecheck fp8_w32_regs4 QuantGpu.Fp8Quantize* 30 $FORCED TPCOMM_QUANT_COLWISE_W=32 TPCOMM_QUANT_COLWISE_REGS=4"
  "racecheck fp8_w64_regs4 QuantGpu.Fp8Quantize* 30 $FORCED TPCOMM_QUANT_COLWISE_REGS=4"
  "racecheck fp8_w128 QuantGpu.Fp8Quantize* 30 $FORCED TPCOMM_QUANT_COLWISE_W=128"
  "memcheck quant $QUANT_ALL 80"
  "synccheck quant $QUANT_LIGHT 50"
  "initcheck quant $QUANT_LIGHT 50"
  "memcheck loopback $LOOPBACK 50"
  "synccheck loopback $LOOPBACK 30"
  "initcheck loopback $LOOPBACK 30"
  "racecheck loopback $LOOPBACK 40"
)

printf '%-10s %-16s %6s %5s %-24s %s\n' tool group secs rc tests sanitizer >> "$SUMMARY"
fail=0
i=0
for run in "${RUNS[@]}"; do
  read -r tool group filter limit envs <<< "$run"
  i=$((i + 1))
  if [ -n "${SANITIZE_ONLY:-}" ] && [[ ",$SANITIZE_ONLY," != *",$tool,"* ]]; then continue; fi
  key="SANITIZE_FILTER_${tool^^}_${group^^}"
  filter=${!key:-$filter}
  log="$WORK/${i}_${tool}_${group}.log"
  left=$(( DEADLINE - ($(date +%s) - T0) ))
  if [ "$left" -lt 10 ]; then
    printf '%-10s %-16s %6s %5s %-24s %s\n' "$tool" "$group" - - "not run" "deadline (SANITIZE_DEADLINE_S=$DEADLINE)" >> "$SUMMARY"
    fail=1
    continue
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  extra=()
  case $tool in
    racecheck) extra=(--racecheck-report hazard) ;;
  esac
  echo "== $tool $group (limit ${limit}s) filter=$filter ${envs:-}"
  t=$(date +%s)
  # shellcheck disable=SC2086
  env ${envs:-} timeout -k 10 "$limit" "$CS" --tool "$tool" --error-exitcode 99 --print-limit 50 "${extra[@]}" \
    "$BIN" --gtest_filter="$filter" > "$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t ))
  passed=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | head -1)
  failed=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | head -1)
  tests="${passed:-0} passed, ${failed:-0} failed"
  summ=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 | sed 's/^========= //')
  hazards=0
  if [ "$tool" = racecheck ]; then
    # "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)": any hazard fails, warnings too.
    hazards=$(grep -E 'RACECHECK SUMMARY' "$log" | grep -oE '[0-9]+ hazard' | grep -oE '[0-9]+' | tail -1)
  fi
  verdict=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then verdict="TIMEOUT after ${secs}s (incomplete)"
  elif [ $rc -eq 77 ]; then verdict="skipped (no GPU)"
  elif [ $rc -eq 99 ]; then verdict="SANITIZER ERRORS"
  elif [ "${hazards:-0}" != 0 ]; then verdict="RACECHECK HAZARDS"
  elif [ $rc -ne 0 ]; then verdict="TESTS FAILED (rc $rc)"
  elif [ -z "$summ" ]; then verdict="no sanitizer summary"
  fi
  [ "$verdict" = ok ] || fail=1
  printf '%-10s %-16s %6s %5s %-24s %s  [%s]\n' "$tool" "$group" "$secs" "$rc" "$tests" "${summ:-none}" "$verdict" >> "$SUMMARY"
  echo "   $verdict: $tests; ${summ:-no summary} (${secs}s)"
  if [ "$verdict" != ok ]; then
    { echo "---- $tool $group: filter $filter ${envs:-}"; grep -E '^=========|FAILED|Failure|error' "$log" | head -40; } >> "$WORK/details.log"
  fi
done
[ -f "$WORK/details.log" ] && { echo; echo "# failing runs (first lines; full logs in sanitizer_logs.tgz)"; cat "$WORK/details.log"; } >> "$SUMMARY"
echo "result: $([ $fail -eq 0 ] && echo CLEAN || echo FAILED) ($(( $(date +%s) - T0 )) s)" >> "$SUMMARY"

cp "$SUMMARY" "$OUTDIR/sanitizer.log"
mkdir -p bench/results/nvidia-h200 && cp "$SUMMARY" bench/results/nvidia-h200/sanitizer.log
tar czf "$OUTDIR/sanitizer_logs.tgz" -C "$WORK" .
cat "$SUMMARY"
exit $fail
