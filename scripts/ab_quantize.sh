#!/usr/bin/env bash
# A/B of quantize kernels inside one device call (runs on different machines of one kind differ by up to 3 points,
# bench/NOTES.md, so only runs of one call are compared). Builds once (Release), runs the quantize GPU tests under
# each setting of TESTS, runs `tpcomm-bench quantize` once per configuration, and compares every configuration
# with the first (scripts/compare_results.py).
#
#   CONFIGS="base:- rows8:TPCOMM_QUANT_TILE_ROWS=8 base2:-" [K=kernel,kernel] [EXP=1,2,4] \
#   [TESTS="- TPCOMM_QUANT_TILE_ROWS=8"] [MIN_DELTA=0.01] [BASE_DIR=dir] bash scripts/ab_quantize.sh
#
# A configuration is name:ENV=V[,ENV2=V2], "-" for no variables; repeat the first one to see the noise. With
# BASE_DIR, configurations whose variables include BASE=1 run BASE_DIR/tpcomm-bench with BASE_DIR/libtpcomm.so
# (a baseline build carried to the machine) instead of this tree's build. All JSON and logs: $OUT/ab.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
WORK=$(mktemp -d)
T0=$(date +%s)
tpcomm_gpu_build "$WORK/build.log" tpcomm-bench tpcomm_gpu_tests || exit 1
echo "build $(( $(date +%s) - T0 )) s"
rc=0
for t in ${TESTS:--}; do
  vars=""; [ "$t" != "-" ] && vars=${t//,/ }
  env $vars "$BUILD/tests/tpcomm_gpu_tests" --gtest_filter='QuantGpu*' > "$WORK/tests.log" 2>&1
  r=$?; [ $r -ne 0 ] && rc=1
  echo "tests [$t] rc=$r: $(grep -E '^\[  (PASSED|FAILED)' "$WORK/tests.log" | head -3 | tr '\n' ' ')"
done
K=${K:-mxfp8_both,mxfp8_colwise,mxfp8_colwise_3d,nvfp4_16x16}
EXP=${EXP:-1,2,4,8,16,32,64,128}
names=()
for c in ${CONFIGS:?set CONFIGS}; do
  name=${c%%:*}; vars=${c#*:}; [ "$vars" = "-" ] && vars=""; vars=${vars//,/ }
  bin="$BUILD/tpcomm-bench"; ldp=()
  case " $vars " in *" BASE=1 "*)
    bin="${BASE_DIR:?BASE=1 needs BASE_DIR}/tpcomm-bench"; ldp=("LD_LIBRARY_PATH=$(cd "$BASE_DIR" && pwd):${LD_LIBRARY_PATH:-}");;
  esac
  env $vars "${ldp[@]}" "$bin" quantize --no-probe --check --kernels "$K" --experts "$EXP" \
    --json "$WORK/$name.json" > "$WORK/$name.log" 2>&1
  r=$?; [ $r -ne 0 ] && rc=1
  echo "bench $name rc=$r ($(( $(date +%s) - T0 )) s)"; names+=("$name")
done
for n in "${names[@]:1}"; do
  echo "=== ${names[0]} -> $n"
  for f in "${names[0]}" "$n"; do [ -f "$WORK/$f.json" ] || { echo "no results for $f (see $f.log)"; rc=1; continue 2; }; done
  python3 scripts/compare_results.py --min-delta "${MIN_DELTA:-0.01}" "$WORK/${names[0]}.json" "$WORK/$n.json"
done
mkdir -p "${OUT:-ab_out}"
tar czf "${OUT:-ab_out}/ab.tgz" -C "$WORK" .
exit $rc
