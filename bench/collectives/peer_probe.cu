// tpcomm-bench peer_probe: how fast data moves between the GPUs of one node with each transport an
// all-reduce could use, measured the way an all-reduce uses the link: every rank sends to its right
// neighbour (rank+1)%W at the same time, so each rank sends and receives at once.
//
//   tpcomm-bench peer_probe [--sizes 32M,4M] [--cases ce,sm_store,...] [--out DIR | --json PATH] [--nproc N]
//
// Cases (rows): ce (cudaMemcpyAsync to the peer mapping), sm_store (SM loads U vectors locally, stores them
// to the peer), sm_store_fenced_block / sm_store_fenced_warp (same, with a fence.acq_rel.sys + flag store per
// chunk of a block / warp: what a release per chunk costs), tma_store (cp.async.bulk global->smem->peer with
// an S-stage ring), sm_load (SM reads the peer's buffer, writes locally).
// GB/s per direction = bytes sent (read, for sm_load) per rank / time; min over ranks of each rank's median
// over 7 samples; each sample is preceded by a host barrier so the ranks' transfers overlap.
// Every case is checked at every size: the receiver recomputes what its left neighbour sent (the source is a
// pattern of (rank, index)) and compares on the device; the destination is zeroed before each case.
//
// Started without a launcher, it starts one process per local GPU itself (like all_reduce).
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "common.h"
#include "suites.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm::bench {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Device side
// ---------------------------------------------------------------------------------------------------------

__host__ __device__ inline uint32_t pattern_word(int rank, uint64_t i) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(rank + 1) * 0xD1B54A32D192ED03ull;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return static_cast<uint32_t>(x) | 1u;  // never 0: a zeroed (untouched) destination always mismatches
}

__global__ void fill_pattern_kernel(uint32_t* p, std::size_t words, int rank) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < words; i += std::size_t(gridDim.x) * blockDim.x)
    p[i] = pattern_word(rank, i);
}

__global__ void check_pattern_kernel(const uint32_t* p, std::size_t words, int rank, unsigned long long* bad) {
  unsigned long long n = 0;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < words; i += std::size_t(gridDim.x) * blockDim.x)
    n += p[i] != pattern_word(rank, i);
  if (n) atomicAdd(bad, n);
}

// Local loads are plain ld.global, not .nc: ptxas may sink a non-coherent load below the following stores
// (it did, interleaving U=8 into batches of 4 to stay at 32 registers), which a coherent load that might
// alias the store targets forbids. So all U loads stay in flight before the first store.
__device__ __forceinline__ uint4 ld_v4(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 ld_cg_v4(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
// No "memory" clobber on purpose: the U loads of a batch must all be issued before the first store.
__device__ __forceinline__ void st_v4(uint4* p, uint4 v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
}
__device__ __forceinline__ void release_flag_sys(uint32_t* flag, uint32_t value) {
  asm volatile("fence.acq_rel.sys;" ::: "memory");
  asm volatile("st.relaxed.sys.global.u32 [%0], %1;" ::"l"(flag), "r"(value) : "memory");
}

// Copies vectors first, first+stride, ... < end: U independent loads, then U stores.
template <int U, bool kPeerLoad>
__device__ __forceinline__ void copy_strided(const uint4* __restrict__ src, uint4* dst, std::size_t first,
                                             std::size_t end, std::size_t stride) {
  std::size_t i = first;
  for (; i + (U - 1) * stride < end; i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = kPeerLoad ? ld_cg_v4(src + i + u * stride) : ld_v4(src + i + u * stride);
#pragma unroll
    for (int u = 0; u < U; ++u) st_v4(dst + i + u * stride, v[u]);
  }
  for (; i < end; i += stride) st_v4(dst + i, kPeerLoad ? ld_cg_v4(src + i) : ld_v4(src + i));
}

// sm_store (kPeerLoad = false: src local, dst peer) and sm_load (true: src peer, dst local); grid-stride.
template <int U, bool kPeerLoad>
__global__ void __launch_bounds__(512) copy_kernel(const uint4* __restrict__ src, uint4* dst, std::size_t n) {
  copy_strided<U, kPeerLoad>(src, dst, blockIdx.x * std::size_t(blockDim.x) + threadIdx.x, n,
                             std::size_t(gridDim.x) * blockDim.x);
}

// Contiguous region per block, processed in chunks of chunk_vecs vectors; after each chunk the block
// synchronizes and thread 0 releases (fence.acq_rel.sys) and stores a counter to a peer flag.
template <int U>
__global__ void __launch_bounds__(512) fenced_block_kernel(const uint4* __restrict__ src, uint4* dst, std::size_t n,
                                                           std::size_t chunk_vecs, uint32_t* peer_flags, uint32_t epoch) {
  const std::size_t per = (n + gridDim.x - 1) / gridDim.x;
  const std::size_t begin = std::min(n, blockIdx.x * per), end = std::min(n, begin + per);
  uint32_t c = 0;
  for (std::size_t base = begin; base < end; base += chunk_vecs, ++c) {
    copy_strided<U, false>(src, dst, base + threadIdx.x, std::min(end, base + chunk_vecs), blockDim.x);
    __syncthreads();
    if (threadIdx.x == 0) release_flag_sys(peer_flags + blockIdx.x, epoch + c);
  }
}

// Contiguous region per warp, chunks of chunk_vecs vectors per warp; after each chunk: __syncwarp, lane 0
// releases and stores a counter to its warp's peer flag. No block-wide synchronization.
template <int U>
__global__ void __launch_bounds__(512) fenced_warp_kernel(const uint4* __restrict__ src, uint4* dst, std::size_t n,
                                                          std::size_t chunk_vecs, uint32_t* peer_flags, uint32_t epoch) {
  const unsigned lane = threadIdx.x & 31;
  const std::size_t warps = std::size_t(gridDim.x) * (blockDim.x / 32);
  const std::size_t w = blockIdx.x * std::size_t(blockDim.x / 32) + threadIdx.x / 32;
  const std::size_t per = (n + warps - 1) / warps;
  const std::size_t begin = std::min(n, w * per), end = std::min(n, begin + per);
  uint32_t c = 0;
  for (std::size_t base = begin; base < end; base += chunk_vecs, ++c) {
    copy_strided<U, false>(src, dst, base + lane, std::min(end, base + chunk_vecs), 32);
    __syncwarp();
    if (lane == 0) release_flag_sys(peer_flags + w, epoch + c);
  }
}

// ---- Hopper bulk copies (TMA, non-tensor) -----------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ uint64_t global_u64(const void* p) { return static_cast<uint64_t>(__cvta_generic_to_global(p)); }
__device__ __forceinline__ uint64_t globaltimer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// Arrive once (the barrier's only expected arrival) and add `bytes` to the transaction count of the phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
      "selp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// Generic-proxy <-> async-proxy ordering for shared memory of this CTA.
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// global -> shared, completion signalled on the mbarrier (complete_tx of `bytes`).
__device__ __forceinline__ void bulk_load(uint32_t dst_smem, uint64_t src_global, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst_smem),
               "l"(src_global), "r"(bytes), "r"(bar)
               : "memory");
}
// shared -> global (here: peer memory through the peer mapping), bulk-group completion.
__device__ __forceinline__ void bulk_store(uint64_t dst_global, uint32_t src_smem, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst_global), "r"(src_smem), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() {  // all but the N most recent groups have read their source
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
#endif

// One elected thread per block moves the block's chunks (chunk b, b+G, b+2G, ... of `chunk` bytes) through a
// ring of S shared-memory stages: bulk load global -> stage (mbarrier), bulk store stage -> peer (bulk group).
// Chunk k uses stage k % S (the (k/S)-th use of that stage: mbarrier phase parity (k/S)&1). After storing
// chunk k, the stage of chunk k-LAG is refilled with chunk k-LAG+S once its store has read the stage
// (wait_group.read LAG: the LAG stores issued after it may still be running), so up to LAG+1 stores are in
// flight while the next S-LAG-1 loads are already issued. LAG = S/2.
// kProxyFence: fence.proxy.async.shared::cta between observing a stage's load (mbarrier) and the bulk store
// that reads it. Both accesses are async-proxy ones, ordered through the mbarrier, so it should not be
// needed; it compiles to MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC.S per chunk, so both variants are measured.
template <int S, bool kProxyFence>
__global__ void __launch_bounds__(32) tma_store_kernel(const uint8_t* src, uint8_t* dst, std::size_t bytes, uint32_t chunk) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) uint8_t stages[];
  __shared__ __align__(8) uint64_t bars[S];
  constexpr int LAG = S / 2;
  static_assert(LAG >= 1 && LAG < S, "stages");
  if (threadIdx.x != 0) return;
  const std::size_t nchunks = (bytes + chunk - 1) / chunk;
  const std::size_t b = blockIdx.x, G = gridDim.x;
  if (b >= nchunks) return;
  const uint32_t n = static_cast<uint32_t>((nchunks - b + G - 1) / G);
  const uint32_t sbase = smem_u32(stages), bbase = smem_u32(bars);
  const uint64_t gsrc = global_u64(src), gdst = global_u64(dst);
  for (int s = 0; s < S; ++s) mbar_init(bbase + 8 * s, 1);
  // Make the initialized barriers visible to the async proxy (the bulk loads' complete_tx) before first use.
  fence_proxy_async_smem();
  auto offset = [&](uint32_t k) { return (b + std::size_t(k) * G) * chunk; };
  auto length = [&](uint32_t k) { return static_cast<uint32_t>(std::min<std::size_t>(chunk, bytes - offset(k))); };
  auto load = [&](uint32_t k) {
    const uint32_t s = k % S, bar = bbase + 8 * s, len = length(k);
    mbar_arrive_expect_tx(bar, len);
    bulk_load(sbase + s * chunk, gsrc + offset(k), len, bar);
  };
  for (uint32_t k = 0; k < n && k < uint32_t(S); ++k) load(k);
  const uint64_t t0 = globaltimer_ns();
  for (uint32_t k = 0; k < n; ++k) {
    const uint32_t s = k % S;
    while (!mbar_try_wait(bbase + 8 * s, (k / S) & 1)) {
      if (globaltimer_ns() - t0 > 4000000000ull) {  // 4 s: a wrong phase/tx count must not hang the run
        printf("peer_probe: tma_store block %d: chunk %u of %u never arrived (mbarrier wait timed out)\n",
               int(blockIdx.x), k, n);
        __trap();
      }
    }
    if (kProxyFence) fence_proxy_async_smem();
    bulk_store(gdst + offset(k), sbase + s * chunk, length(k));
    bulk_commit();
    if (k >= uint32_t(LAG) && k - LAG + S < n) {
      bulk_wait_read<LAG>();  // the store of chunk k-LAG has read its stage: refill it
      load(k - LAG + S);
    }
  }
  bulk_wait_all();  // every store complete (written) before the block exits
#else
  __trap();  // needs sm_90 (the host skips this case on older GPUs)
#endif
}

// ---------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------

const char* const kAllKinds[] = {"ce", "sm_store", "sm_store_fenced_block", "sm_store_fenced_warp", "tma_store", "sm_load"};

struct Case {
  std::string kind;
  int grid = 0, block = 0, unroll = 0, stages = 0;
  std::size_t chunk = 0;
  bool proxy_fence = false;  // tma_store: fence.proxy.async per chunk
  std::string params() const {
    if (kind == "ce") return "cudaMemcpyAsync";
    std::string p = "G=" + std::to_string(grid) + " B=" + std::to_string(block);
    if (unroll) p += " U=" + std::to_string(unroll);
    if (chunk) p += " C=" + format_size(chunk);
    if (stages) p += " S=" + std::to_string(stages);
    if (proxy_fence) p += " PF";
    return p;
  }
};

std::vector<Case> make_cases(const std::vector<std::string>& kinds) {
  std::vector<Case> out;
  auto want = [&](const char* k) { return std::find(kinds.begin(), kinds.end(), k) != kinds.end(); };
  if (want("ce")) out.push_back({"ce", 0, 0, 0, 0, 0});
  if (want("sm_store")) {
    for (int g : {32, 64, 96, 128, 132, 264}) out.push_back({"sm_store", g, 512, 4, 0, 0});
    out.push_back({"sm_store", 264, 256, 4, 0, 0});
    out.push_back({"sm_store", 132, 512, 8, 0, 0});
  }
  if (want("sm_store_fenced_block"))
    for (std::size_t c : {8u << 10, 32u << 10, 128u << 10}) out.push_back({"sm_store_fenced_block", 128, 512, 4, 0, c});
  if (want("sm_store_fenced_warp"))
    for (std::size_t c : {2u << 10, 8u << 10, 32u << 10}) out.push_back({"sm_store_fenced_warp", 128, 512, 4, 0, c});
  if (want("tma_store")) {
    // Full sweep with the (conservative) per-chunk proxy fence, and the same without it at B=32K.
    for (int s : {2, 4})
      for (std::size_t c : {16u << 10, 32u << 10})
        for (int g : {16, 32, 66, 132}) out.push_back({"tma_store", g, 32, 0, s, c, true});
    for (int s : {2, 4})
      for (int g : {66, 132}) out.push_back({"tma_store", g, 32, 0, s, std::size_t(32) << 10, false});
  }
  if (want("sm_load"))
    for (int g : {64, 132, 264}) out.push_back({"sm_load", g, 512, 4, 0, 0});
  return out;
}

struct Args {
  std::vector<std::size_t> sizes = {std::size_t(32) << 20, std::size_t(4) << 20};
  std::vector<std::string> kinds{std::begin(kAllKinds), std::end(kAllKinds)};
  std::string out_dir = "bench/results/local", json;
  int nproc = 0;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t a = 0;
  while (a <= s.size()) {
    const std::size_t b = s.find(',', a);
    const std::string item = s.substr(a, b == std::string::npos ? std::string::npos : b - a);
    if (!item.empty()) out.push_back(item);
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return out;
}

void usage() {
  std::printf(
      "tpcomm-bench peer_probe [--sizes 32M,4M] [--cases ce,sm_store,sm_store_fenced_block,sm_store_fenced_warp,\n"
      "    tma_store,sm_load] [--out DIR] [--json PATH] [--nproc N]\n"
      "every rank sends to rank+1 at once; GB/s per direction (bytes per rank / time), min over ranks\n");
}

bool parse(int argc, char** argv, Args& a, int& rc) {
  rc = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "peer_probe: %s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--sizes") {
      a.sizes.clear();
      for (auto& t : split(next())) {
        const std::size_t b = parse_size(t) / 16 * 16;  // bulk copies and uint4 vectors: multiples of 16
        if (b == 0) {
          std::fprintf(stderr, "peer_probe: size '%s' is below 16 bytes\n", t.c_str());
          rc = 2;
          return false;
        }
        a.sizes.push_back(b);
      }
    } else if (k == "--cases") {
      a.kinds = split(next());
      for (auto& c : a.kinds)
        if (std::find(std::begin(kAllKinds), std::end(kAllKinds), c) == std::end(kAllKinds)) {
          std::fprintf(stderr, "peer_probe: unknown case '%s'\n", c.c_str());
          usage();
          rc = 2;
          return false;
        }
    } else if (k == "--out") a.out_dir = next();
    else if (k == "--json") a.json = next();
    else if (k == "--nproc") a.nproc = std::atoi(next().c_str());
    else if (k == "-h" || k == "--help") {
      usage();
      return false;
    }
    // other suites' options (the default job passes one argument list to every suite) are ignored
  }
  if (a.sizes.empty()) {
    std::fprintf(stderr, "peer_probe: --sizes is empty\n");
    rc = 2;
    return false;
  }
  return true;
}

// Launches per sample: enough that one sample lasts a few hundred us (host-barrier skew between ranks is
// then small against it), at least 5.
int iters_for(std::size_t bytes) {
  return static_cast<int>(std::clamp<std::size_t>((std::size_t(160) << 20) / bytes, 5, 40));
}

constexpr std::size_t kPadBytes = 64 * 1024;      // signal pad of the symmetric buffer (flags)
constexpr std::size_t kBlockFlagOffset = 8192;    // words: block flags after the (up to 8192) warp flags

int run(int argc, char** argv) {
  Args a;
  int prc = 0;
  if (!parse(argc, argv, a, prc)) return prc;
  int rc = 0;  // a hang must not eat the device time: the ranks are killed after 300 s (expected < 1 min)
  if (relaunch_per_gpu("peer_probe", argc, argv, a.nproc, 300, &rc)) return rc;

  auto comm = Communicator::from_env();
  const int R = comm->rank(), W = comm->world_size();
  const bool lead = R == 0;
  std::string command = "tpcomm-bench";
  for (int i = 0; i < argc; ++i) command += std::string(" ") + argv[i];
  if (W < 2 || !comm->fast_path()) {
    if (lead)
      std::printf("peer_probe: skipped: %s\n", W < 2 ? "needs 2 or more GPUs" : ("no peer fast path: " + comm->topology().reason).c_str());
    comm->destroy();
    return 0;
  }
  const int right = (R + 1) % W, left = (R + W - 1) % W;
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, comm->device()));
  const bool hopper = prop.major >= 9;
  std::vector<Case> cases = make_cases(a.kinds);
  if (!hopper) {
    if (lead && std::find(a.kinds.begin(), a.kinds.end(), "tma_store") != a.kinds.end())
      std::printf("peer_probe: tma_store skipped (needs sm_90, device is sm_%d%d)\n", prop.major, prop.minor);
    cases.erase(std::remove_if(cases.begin(), cases.end(), [](const Case& c) { return c.kind == "tma_store"; }), cases.end());
  }
  if (lead) {
    std::printf("peer_probe: %d ranks, %s; every rank sends to rank+1 at once, GB/s per direction, min over ranks\n", W,
                device_name(comm->device()).c_str());
    std::printf("reproduce: %s\n", command.c_str());
    std::fflush(stdout);
  }

  const std::size_t max_bytes = *std::max_element(a.sizes.begin(), a.sizes.end());
  auto buf = SymmetricBuffer::allocate(*comm, max_bytes, kPadBytes);
  uint8_t *src = nullptr, *dst_local = nullptr;
  unsigned long long* d_bad = nullptr;
  BENCH_CUDA(cudaMalloc(&src, max_bytes));
  BENCH_CUDA(cudaMalloc(&dst_local, max_bytes));
  BENCH_CUDA(cudaMalloc(&d_bad, sizeof(unsigned long long)));
  cudaStream_t s;
  BENCH_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  BENCH_CUDA(cudaEventCreate(&e0));
  BENCH_CUDA(cudaEventCreate(&e1));
  const int fill_grid = prop.multiProcessorCount * 4;
  fill_pattern_kernel<<<fill_grid, 256, 0, s>>>(reinterpret_cast<uint32_t*>(src), max_bytes / 4, R);
  BENCH_CUDA(cudaGetLastError());
  BENCH_CUDA(cudaStreamSynchronize(s));
  if (hopper) {
    BENCH_CUDA(cudaFuncSetAttribute(tma_store_kernel<2, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, 2 * (32 << 10)));
    BENCH_CUDA(cudaFuncSetAttribute(tma_store_kernel<2, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, 2 * (32 << 10)));
    BENCH_CUDA(cudaFuncSetAttribute(tma_store_kernel<4, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, 4 * (32 << 10)));
    BENCH_CUDA(cudaFuncSetAttribute(tma_store_kernel<4, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, 4 * (32 << 10)));
  }
  uint8_t* peer_dst = static_cast<uint8_t*>(buf->peer(right));
  const uint8_t* peer_src = static_cast<const uint8_t*>(buf->peer(right));  // sm_load reads the right neighbour
  uint8_t* own = static_cast<uint8_t*>(buf->local());
  uint32_t* peer_flags = buf->peer_signal_pad(right);
  uint32_t epoch = 1;

  struct Row {
    Case c;
    std::size_t bytes;
    double us, gbps;
    bool correct;
    int iters;
  };
  std::vector<Row> rows;
  int failures = 0;
  for (std::size_t bytes : a.sizes) {
    const std::size_t nvec = bytes / 16;
    const int iters = iters_for(bytes);
    for (const Case& c : cases) {
      const bool load_case = c.kind == "sm_load";
      auto launch = [&]() {
        const uint4* vsrc = reinterpret_cast<const uint4*>(src);
        if (c.kind == "ce") {
          BENCH_CUDA(cudaMemcpyAsync(peer_dst, src, bytes, cudaMemcpyDeviceToDevice, s));
        } else if (c.kind == "sm_store") {
          if (c.unroll == 8) copy_kernel<8, false><<<c.grid, c.block, 0, s>>>(vsrc, reinterpret_cast<uint4*>(peer_dst), nvec);
          else copy_kernel<4, false><<<c.grid, c.block, 0, s>>>(vsrc, reinterpret_cast<uint4*>(peer_dst), nvec);
        } else if (c.kind == "sm_store_fenced_block") {
          fenced_block_kernel<4><<<c.grid, c.block, 0, s>>>(vsrc, reinterpret_cast<uint4*>(peer_dst), nvec, c.chunk / 16,
                                                            peer_flags + kBlockFlagOffset, epoch);
          epoch += 1u << 16;
        } else if (c.kind == "sm_store_fenced_warp") {
          fenced_warp_kernel<4><<<c.grid, c.block, 0, s>>>(vsrc, reinterpret_cast<uint4*>(peer_dst), nvec, c.chunk / 16,
                                                           peer_flags, epoch);
          epoch += 1u << 16;
        } else if (c.kind == "tma_store") {
          const std::size_t smem = std::size_t(c.stages) * c.chunk;
          auto k = c.stages == 2 ? (c.proxy_fence ? tma_store_kernel<2, true> : tma_store_kernel<2, false>)
                                 : (c.proxy_fence ? tma_store_kernel<4, true> : tma_store_kernel<4, false>);
          k<<<c.grid, 32, smem, s>>>(src, peer_dst, bytes, uint32_t(c.chunk));
        } else if (c.kind == "sm_load") {
          copy_kernel<4, true><<<c.grid, c.block, 0, s>>>(reinterpret_cast<const uint4*>(peer_src),
                                                          reinterpret_cast<uint4*>(dst_local), nvec);
        }
        BENCH_CUDA(cudaGetLastError());
      };
      if (c.kind == "sm_store_fenced_warp" && std::size_t(c.grid) * (c.block / 32) > kBlockFlagOffset) {
        std::fprintf(stderr, "peer_probe: too many warps for the flag area\n");
        std::exit(2);
      }
      // Prepare: zero what this rank will check (sm_load: its local destination, with its own buffer holding
      // its pattern for the left neighbour to read; store cases: its own symmetric buffer, the left
      // neighbour's target). Every rank finished the previous case (synchronized + barrier) before this.
      if (load_case) {
        fill_pattern_kernel<<<fill_grid, 256, 0, s>>>(reinterpret_cast<uint32_t*>(own), bytes / 4, R);
        BENCH_CUDA(cudaGetLastError());
        BENCH_CUDA(cudaMemsetAsync(dst_local, 0, bytes, s));
      } else {
        BENCH_CUDA(cudaMemsetAsync(own, 0, bytes, s));
      }
      BENCH_CUDA(cudaStreamSynchronize(s));
      comm->host_barrier();
      // Warm-up (also the lazy loading of the kernel), then 7 samples each started from a host barrier.
      launch();
      BENCH_CUDA(cudaStreamSynchronize(s));
      std::vector<double> samples;
      for (int r = 0; r < 7; ++r) {
        comm->host_barrier();
        BENCH_CUDA(cudaEventRecord(e0, s));
        for (int i = 0; i < iters; ++i) launch();
        BENCH_CUDA(cudaEventRecord(e1, s));
        BENCH_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        BENCH_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        samples.push_back(1000.0 * ms / iters);
      }
      BENCH_CUDA(cudaStreamSynchronize(s));
      comm->host_barrier();  // the left neighbour's writes into our buffer are complete
      // Check: the receiving side recomputes the sender's pattern.
      BENCH_CUDA(cudaMemsetAsync(d_bad, 0, sizeof(unsigned long long), s));
      if (load_case)
        check_pattern_kernel<<<fill_grid, 256, 0, s>>>(reinterpret_cast<const uint32_t*>(dst_local), bytes / 4, right, d_bad);
      else
        check_pattern_kernel<<<fill_grid, 256, 0, s>>>(reinterpret_cast<const uint32_t*>(own), bytes / 4, left, d_bad);
      BENCH_CUDA(cudaGetLastError());
      unsigned long long bad = 0;
      BENCH_CUDA(cudaMemcpyAsync(&bad, d_bad, sizeof(bad), cudaMemcpyDeviceToHost, s));
      BENCH_CUDA(cudaStreamSynchronize(s));
      struct Mine {
        double gbps;
        unsigned long long bad;
      } mine{bytes / (median(samples) * 1e3), bad};
      std::vector<Mine> all(W);
      comm->host_all_gather(&mine, all.data(), sizeof(Mine));
      double gbps = 1e30;
      unsigned long long total_bad = 0;
      for (auto& m : all) {
        gbps = std::min(gbps, m.gbps);
        total_bad += m.bad;
      }
      const bool correct = total_bad == 0;
      if (!correct) ++failures;
      rows.push_back({c, bytes, bytes / (gbps * 1e3), gbps, correct, iters});
      if (lead && !correct)
        std::printf("MISMATCH: %s %s %s: %llu wrong 32-bit words over all ranks\n", c.kind.c_str(), c.params().c_str(),
                    format_size(bytes).c_str(), total_bad);
    }
    if (lead) {
      std::printf("  %8s done\n", format_size(bytes).c_str());
      std::fflush(stdout);
    }
  }

  if (lead) {
    std::printf("\npeer_probe, %d ranks, all ranks send to rank+1 at once; us = slowest rank's median per launch\n", W);
    std::printf("%-22s %-26s %8s %10s %9s %9s\n", "case", "params", "bytes", "us", "GB/s", "check");
    for (auto& r : rows)
      std::printf("%-22s %-26s %8s %10.2f %9.1f %9s\n", r.c.kind.c_str(), r.c.params().c_str(), format_size(r.bytes).c_str(),
                  r.us, r.gbps, r.correct ? "ok" : "MISMATCH");
    std::vector<std::string> items;
    for (auto& r : rows) {
      JsonObject o;
      o.add("suite", "peer_probe").add("case", r.c.kind).add("grid", r.c.grid).add("block", r.c.block);
      o.add("unroll", r.c.unroll).add("chunk", r.c.chunk).add("stages", r.c.stages).add("proxy_fence", r.c.proxy_fence).add("bytes", r.bytes);
      o.add("us", r.us).add("GBps", r.gbps).add("correct", r.correct).add("iters", r.iters).add("samples", 7);
      items.push_back(o.str());
    }
    JsonObject top;
    top.add("device", device_name(comm->device())).add("world_size", W).add("command", command);
    top.add("failures", failures).add_raw("results", json_array(items));
    const std::string path = a.json.empty() ? a.out_dir + "/peer_probe.json" : a.json;
    if (write_file(path, top.str() + "\n")) std::printf("wrote %s\n", path.c_str());
    std::printf("reproduce: %s\n", command.c_str());
  }
  comm->host_barrier();
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(src);
  cudaFree(dst_local);
  cudaFree(d_bad);
  buf.reset();
  cudaStreamDestroy(s);
  comm->destroy();
  return failures ? 1 : 0;
}

}  // namespace
}  // namespace tpcomm::bench

static int run_peer_probe_suite(int argc, char** argv) {
  return tpcomm::bench::run_suite_guarded("peer_probe", tpcomm::bench::run, argc, argv);
}
TPCOMM_BENCH_SUITE("peer_probe", 15, "NVLink transport probe: copy engine, SM stores/loads, fenced chunks, TMA bulk stores",
                   run_peer_probe_suite);
