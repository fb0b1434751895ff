#!/usr/bin/env bash
# The test command: configure, build everything (library, kernels for every configured arch, bench, tests),
# then run all tests. Without a GPU the GPU suites report "skipped: no CUDA device".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BUILD=${TPCOMM_BUILD_DIR:-build}
cmake -S . -B "$BUILD" ${TPCOMM_CMAKE_GENERATOR:+-G "$TPCOMM_CMAKE_GENERATOR"} ${TPCOMM_CMAKE_ARGS:-}
cmake --build "$BUILD" -j "${TPCOMM_JOBS:-$(nproc)}"
ctest --test-dir "$BUILD" --output-on-failure "$@"
