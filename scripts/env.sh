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
