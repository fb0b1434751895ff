#!/usr/bin/env bash
# The main job: build, then run every benchmark suite on all local GPUs, with NCCL/cuBLAS in the same run.
# Results (JSON, with the exact command) go to bench/results/<device-tag>/ unless --out DIR is given.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BUILD=${TPCOMM_BUILD_DIR:-build}
cmake -S . -B "$BUILD" ${TPCOMM_CMAKE_GENERATOR:+-G "$TPCOMM_CMAKE_GENERATOR"} ${TPCOMM_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" -j "${TPCOMM_JOBS:-$(nproc)}" --target tpcomm-bench
exec "$BUILD/tpcomm-bench" "$@"
