#!/usr/bin/env bash
# The main job: build, then run every benchmark suite on all local GPUs, with NCCL/cuBLAS in the same run.
# Results (JSON, with the exact command) go to bench/results/<device-tag>/ unless --out DIR is given.
# The async-TP suites (ag_gemm, gemm_rs -> async_tp.json) run on every local GPU, with PyTorch's fused ops through
# bench/async_tp/torch_symm_mem.py when torch is importable (TPCOMM_PYTHON picks the interpreter); with one GPU they
# run a loopback world of 2 ranks on it (correctness only). One suite: bash scripts/bench.sh ag_gemm --dtype bf16
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BUILD=${TPCOMM_BUILD_DIR:-build}
cmake -S . -B "$BUILD" ${TPCOMM_CMAKE_GENERATOR:+-G "$TPCOMM_CMAKE_GENERATOR"} ${TPCOMM_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" -j "${TPCOMM_JOBS:-$(nproc)}" --target tpcomm-bench
exec "$BUILD/tpcomm-bench" "$@"
