#!/usr/bin/env bash
# Optional coverage-guided fuzzing of the host validators with libFuzzer (tests/fuzz/validators_fuzz.cpp), where
# clang++ supports -fsanitize=fuzzer. Not part of CI (CI runs the property tests, tests/**/*_fuzz_test.cpp, with
# g++). CPU only. The validator sources are compiled into the target with ASan + UBSan and fuzzer coverage; the
# rest of the library comes from libtpcomm.so (built here if missing).
#
#   bash scripts/fuzz.sh                 60 s of fuzzing (FUZZ_SECONDS), corpus in build-fuzz/corpus
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
CXX_FUZZ=${CXX_FUZZ:-clang++}
command -v "$CXX_FUZZ" >/dev/null || { echo "no $CXX_FUZZ: libFuzzer target not built (optional)"; exit 0; }
OUTD=${FUZZ_BUILD_DIR:-build-fuzz}
mkdir -p "$OUTD/corpus"
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
     "$CXX_FUZZ" -x c++ -fsanitize=fuzzer - -o "$OUTD/probe" 2>/dev/null; then
  echo "$CXX_FUZZ does not support -fsanitize=fuzzer: libFuzzer target not built (optional)"
  exit 0
fi
LIBDIR=${TPCOMM_BUILD_DIR:-build}
if [ ! -f "$LIBDIR/libtpcomm.so" ]; then
  cmake -S . -B "$LIBDIR" ${TPCOMM_CMAKE_GENERATOR:+-G "$TPCOMM_CMAKE_GENERATOR"} >/dev/null
  cmake --build "$LIBDIR" -j "${TPCOMM_JOBS:-$(nproc)}" --target tpcomm
fi
CUDA_INC=$(dirname "$(command -v nvcc)")/../include
"$CXX_FUZZ" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Iinclude -Isrc -I"$CUDA_INC" $(for d in /usr/local/cuda/targets/*/include; do echo "-I$d"; done) \
  tests/fuzz/validators_fuzz.cpp src/quantize/validate.cpp src/collectives/all_reduce_select.cpp \
  -L"$LIBDIR" -Wl,-rpath,"$(cd "$LIBDIR" && pwd)" -ltpcomm -L"$(dirname "$(command -v nvcc)")/../lib64" -lcudart -o "$OUTD/validators_fuzz"
"$OUTD/validators_fuzz" -max_total_time="${FUZZ_SECONDS:-60}" -print_final_stats=1 "$OUTD/corpus"
