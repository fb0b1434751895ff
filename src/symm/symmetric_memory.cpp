#include "tpcomm/symmetric_memory.h"

#include <cuda.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "comm/comm_impl.h"
#include "common/check.h"
#include "common/driver.h"
#include "symm/symm_impl.h"
#include "tpcomm/communicator.h"
#include "tpcomm/error.h"
#include "tpcomm/log.h"

namespace tpcomm {

namespace {

struct Exchange {
  cudaIpcMemHandle_t handle;
  uint64_t ptr;
  uint64_t bytes;
  int32_t pid;
  int32_t ok;
};

}  // namespace

std::unique_ptr<SymmetricBuffer> SymmetricAllocator::allocate_agreed(const Communicator& comm, std::size_t bytes,
                                                                     std::size_t pad_bytes, std::string* why) {
  TPCOMM_ARG_CHECK(bytes > 0, "bytes", "must be positive");
  TPCOMM_ARG_CHECK(pad_bytes % 16 == 0, "signal_pad_bytes", "must be a multiple of 16");
  const int W = comm.world_size(), R = comm.rank();
  TPCOMM_CUDA_CHECK(cudaSetDevice(comm.device()));
  std::unique_ptr<SymmetricBuffer> buf(new SymmetricBuffer());
  buf->rank_ = R;
  buf->world_size_ = W;
  buf->device_ = comm.device();
  buf->bytes_ = bytes;
  buf->pad_bytes_ = pad_bytes;
  const std::size_t pad_aligned = (pad_bytes + 255) / 256 * 256;  // data starts 256-byte aligned

  // 1. Local allocation and export (a failure here is agreed on below, not thrown, so no rank is left
  //    waiting in the all-gather).
  Exchange me{};
  me.bytes = bytes;
  me.pid = static_cast<int32_t>(getpid());
  std::string local_err;
  // Whole 2 MiB units: cudaMalloc packs smaller blocks into shared 2 MiB chunks, and CUDA IPC exports and maps a
  // whole chunk, once per importing process: a small symmetric buffer in a chunk that a peer had already opened
  // (e.g. for a registered buffer) failed there with "resource already mapped" (mp test, session 9). A buffer of
  // whole chunks is its own IPC allocation, and its handle maps to its own base.
  constexpr std::size_t kChunk = std::size_t(2) << 20;
  const std::size_t alloc_bytes = (pad_aligned + bytes + kChunk - 1) / kChunk * kChunk;
  if (cudaMalloc(&buf->base_, alloc_bytes) != cudaSuccess ||
      cudaMemset(buf->base_, 0, pad_aligned + bytes) != cudaSuccess) {
    cudaGetLastError();
    local_err = "cudaMalloc of " + std::to_string(alloc_bytes) + " bytes failed";
    buf->base_ = nullptr;
  } else if (!comm.loopback() && cudaIpcGetMemHandle(&me.handle, buf->base_) != cudaSuccess) {
    // (A loopback world's peers are this process on this device: they use the pointer itself, no IPC handle.)
    cudaGetLastError();
    local_err = "cudaIpcGetMemHandle failed";
  }
  me.ptr = reinterpret_cast<uint64_t>(buf->base_);
  me.ok = local_err.empty() ? 1 : 0;
  std::vector<Exchange> all(W);
  comm.host_all_gather(&me, all.data(), sizeof(Exchange));
  for (int p = 0; p < W; ++p) {
    if (all[p].bytes != bytes) {
      if (buf->base_) cudaFree(buf->base_);
      buf->base_ = nullptr;
      throw Error(ErrorCode::kMismatch, "bytes: rank " + std::to_string(p) + " allocates " + std::to_string(all[p].bytes) +
                                            " bytes, rank " + std::to_string(R) + " " + std::to_string(bytes));
    }
  }

  // 2. Map every peer: same process -> the pointer itself (UVA) with peer access enabled; else CUDA IPC.
  buf->peer_bases_.assign(W, nullptr);
  buf->peer_ipc_.assign(W, false);
  bool all_ok = true;
  for (int p = 0; p < W; ++p) all_ok = all_ok && all[p].ok;
  if (all_ok && local_err.empty()) {
    const auto& ranks = comm.impl().ranks;
    for (int p = 0; p < W && local_err.empty(); ++p) {
      if (p == R) {
        buf->peer_bases_[p] = buf->base_;
        continue;
      }
      if (all[p].pid == me.pid) {
        const int peer_dev = ranks.empty() ? -1 : ranks[p].cuda_device;
        if (peer_dev >= 0 && peer_dev != comm.device()) {
          const cudaError_t e = cudaDeviceEnablePeerAccess(peer_dev, 0);
          if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled) {
            local_err = std::string("cudaDeviceEnablePeerAccess to device ") + std::to_string(peer_dev) + ": " +
                        cudaGetErrorString(e);
          }
          cudaGetLastError();
        }
        buf->peer_bases_[p] = reinterpret_cast<void*>(all[p].ptr);
      } else {
        void* mapped = nullptr;
        const cudaError_t e = cudaIpcOpenMemHandle(&mapped, all[p].handle, cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
          cudaGetLastError();
          local_err = std::string("cudaIpcOpenMemHandle of rank ") + std::to_string(p) + ": " + cudaGetErrorString(e);
        } else {
          buf->peer_bases_[p] = mapped;
          buf->peer_ipc_[p] = true;
        }
      }
    }
  } else if (local_err.empty()) {
    local_err = "a peer could not allocate or export its buffer";
  }

  // 3. Agree.
  int32_t ok = local_err.empty() ? 1 : 0;
  std::vector<int32_t> oks(W);
  comm.host_all_gather(&ok, oks.data(), sizeof(ok));
  for (int p = 0; p < W; ++p) {
    if (!oks[p]) {
      if (why) *why = p == R ? local_err : "rank " + std::to_string(p) + " failed to map its peers";
      return nullptr;  // the destructor unmaps and frees what was made
    }
  }

  buf->peer_data_.resize(W);
  buf->peer_pads_.resize(W);
  for (int p = 0; p < W; ++p) {
    buf->peer_pads_[p] = static_cast<uint32_t*>(buf->peer_bases_[p]);
    buf->peer_data_[p] = static_cast<char*>(buf->peer_bases_[p]) + pad_aligned;
  }
  TPCOMM_CUDA_CHECK(cudaMalloc(&buf->d_peer_data_, sizeof(void*) * W));
  TPCOMM_CUDA_CHECK(cudaMalloc(&buf->d_peer_pads_, sizeof(uint32_t*) * W));
  TPCOMM_CUDA_CHECK(cudaMemcpy(buf->d_peer_data_, buf->peer_data_.data(), sizeof(void*) * W, cudaMemcpyHostToDevice));
  TPCOMM_CUDA_CHECK(cudaMemcpy(buf->d_peer_pads_, buf->peer_pads_.data(), sizeof(uint32_t*) * W, cudaMemcpyHostToDevice));
  return buf;
}

std::unique_ptr<SymmetricBuffer> SymmetricBuffer::allocate(const Communicator& comm, std::size_t bytes,
                                                           std::size_t signal_pad_bytes) {
  comm.impl().ensure_usable("SymmetricBuffer::allocate");
  if (!comm.fast_path())
    throw Error(ErrorCode::kUnsupported, "SymmetricBuffer::allocate: peer memory is unavailable on this communicator: " +
                                             comm.topology().reason);
  std::string why;
  auto buf = SymmetricAllocator::allocate_agreed(comm, bytes, signal_pad_bytes, &why);
  if (!buf) throw Error(ErrorCode::kCudaError, "SymmetricBuffer::allocate: " + why);
  return buf;
}

SymmetricBuffer::~SymmetricBuffer() {
  cudaSetDevice(device_);
  for (std::size_t p = 0; p < peer_bases_.size(); ++p)
    if (peer_ipc_[p] && peer_bases_[p]) cudaIpcCloseMemHandle(peer_bases_[p]);
  if (d_peer_data_) cudaFree(d_peer_data_);
  if (d_peer_pads_) cudaFree(d_peer_pads_);
  if (base_) cudaFree(base_);
}

void* SymmetricBuffer::peer(int r) const {
  TPCOMM_ARG_CHECK(r >= 0 && r < world_size_, "rank", std::to_string(r) + " is outside the world");
  return peer_data_[r];
}

uint32_t* SymmetricBuffer::peer_signal_pad(int r) const {
  TPCOMM_ARG_CHECK(r >= 0 && r < world_size_, "rank", std::to_string(r) + " is outside the world");
  return peer_pads_[r];
}

void stream_write_value32(cudaStream_t stream, uint32_t* addr, uint32_t value) {
  TPCOMM_ARG_CHECK(addr != nullptr, "addr", "null pointer");
  TPCOMM_ARG_CHECK(reinterpret_cast<uintptr_t>(addr) % 4 == 0, "addr", "must be 4-byte aligned");
  TPCOMM_CU_CHECK(detail::driver().stream_write_value32(reinterpret_cast<CUstream>(stream),
                                                        reinterpret_cast<CUdeviceptr>(addr), value,
                                                        CU_STREAM_WRITE_VALUE_DEFAULT));
}

void memset32(cudaStream_t stream, uint32_t* addr, uint32_t value, std::size_t count) {
  TPCOMM_ARG_CHECK(addr != nullptr, "addr", "null pointer");
  TPCOMM_ARG_CHECK(reinterpret_cast<uintptr_t>(addr) % 4 == 0, "addr", "must be 4-byte aligned");
  if (count == 0) return;
  TPCOMM_CU_CHECK(detail::driver().memset_d32_async(reinterpret_cast<CUdeviceptr>(addr), value, count,
                                                    reinterpret_cast<CUstream>(stream)));
}

namespace detail {

ExportedRange export_range(const void* ptr, std::size_t bytes) {
  TPCOMM_ARG_CHECK(ptr != nullptr, "ptr", "null pointer");
  ExportedRange r{};
  CUdeviceptr base = 0;
  std::size_t size = 0;
  const CUresult e = driver().mem_get_address_range(&base, &size, reinterpret_cast<CUdeviceptr>(ptr));
  TPCOMM_ARG_CHECK(e == CUDA_SUCCESS, "ptr", "is not device memory allocated with cudaMalloc");
  const uint64_t off = reinterpret_cast<uint64_t>(ptr) - base;
  TPCOMM_ARG_CHECK(off + bytes <= size, "bytes",
                   std::to_string(bytes) + " bytes from ptr run past the end of its allocation");
  const cudaError_t ce = cudaIpcGetMemHandle(&r.handle, reinterpret_cast<void*>(base));
  if (ce != cudaSuccess) {
    cudaGetLastError();
    throw Error(ErrorCode::kInvalidArgument,
                std::string("ptr: its allocation cannot be shared with peers (cudaIpcGetMemHandle: ") + cudaGetErrorString(ce) + ")");
  }
  r.base = base;
  r.offset = off;
  r.bytes = bytes;
  r.pid = static_cast<int32_t>(getpid());
  r.ok = 1;
  return r;
}

void* CommImpl::map_peer_allocation(int peer, const cudaIpcMemHandle_t& h, uintptr_t peer_base, int peer_pid, void* peer_ptr) {
  if (peer == rank) return reinterpret_cast<void*>(peer_base);
  if (peer_pid == static_cast<int>(getpid())) return reinterpret_cast<void*>(peer_base);  // one process: UVA
  auto key = std::make_pair(peer, std::string(h.reserved, sizeof(h.reserved)));
  auto it = opened.find(key);
  if (it != opened.end()) return it->second;
  void* mapped = nullptr;
  TPCOMM_CUDA_CHECK(cudaIpcOpenMemHandle(&mapped, h, cudaIpcMemLazyEnablePeerAccess));
  opened[key] = mapped;
  return mapped;
}

}  // namespace detail
}  // namespace tpcomm
