# Sourced by the scripts: environment every run needs.
# NVLink multicast (NVLS) is never used by tpcomm and must stay off on shared machines.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# Ninja when available (faster), Make otherwise.
if [ -z "${TPCOMM_CMAKE_GENERATOR:-}" ] && command -v ninja >/dev/null 2>&1; then export TPCOMM_CMAKE_GENERATOR=Ninja; fi
# NCCL shipped inside a Python environment (PyTorch's nvidia-nccl wheel): make its library loadable.
if _nccl_dir=$(python3 -c "import importlib.util as u; s=u.find_spec('nvidia.nccl'); print(list(s.submodule_search_locations)[0])" 2>/dev/null) && [ -n "$_nccl_dir" ]; then
  export LD_LIBRARY_PATH="$_nccl_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
unset _nccl_dir
# Release build of this tree for the GPU scripts: tpcomm_gpu_build LOG [TARGET...] builds into $BUILD
# (TPCOMM_BUILD_DIR, default build-gpu), the whole project or the named targets, output in LOG; on failure prints
# the errors and returns 1.
BUILD=${TPCOMM_BUILD_DIR:-build-gpu}
tpcomm_gpu_build() {
  local log=$1; shift
  local targets=()
  [ $# -gt 0 ] && targets=(--target "$@")
  if ! { cmake -S . -B "$BUILD" ${TPCOMM_CMAKE_GENERATOR:+-G "$TPCOMM_CMAKE_GENERATOR"} -DCMAKE_BUILD_TYPE=Release &&
         cmake --build "$BUILD" -j "$(nproc)" "${targets[@]}"; } > "$log" 2>&1; then
    grep -E "error|Error" "$log" | head -30; echo "BUILD FAILED"; return 1
  fi
}
