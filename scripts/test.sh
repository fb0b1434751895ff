#!/usr/bin/env bash
# The test command: configure, build everything (library, kernels for every configured arch, bench, tests),
# then run all tests. Without a GPU the GPU suites report "skipped: no CUDA device".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BUILD=${TPCOMM_BUILD_DIR:-build}
cmake -S . -B "$BUILD" ${TPCOMM_CMAKE_GENERATOR:+-G "$TPCOMM_CMAKE_GENERATOR"} ${TPCOMM_CMAKE_ARGS:-}
cmake --build "$BUILD" -j "${TPCOMM_JOBS:-$(nproc)}"
rc=0
ctest --test-dir "$BUILD" --output-on-failure "$@" || rc=$?
# CTest shows a skipped test as "Skipped" without its output; print each skip reason the tests gave, once.
grep -h "^skipped: " "$BUILD/Testing/Temporary/LastTest.log" 2>/dev/null | sort | uniq -c | sed 's/^/skip reason:/' || true
exit $rc
