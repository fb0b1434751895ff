// FP8-wire two-shot all-reduce (AllReduceWire::kFp8, opt-in, lossy). Host dispatch: all_reduce_fp8wire.cu;
// layout: all_reduce_fp8wire.h; math, error bound, when it pays: docs/all_reduce.md.
//
// Protocol: all_reduce_two_shot's (all_reduce_kernels.cuh), on the same workspace region, parity halves, grid,
// BlockState counters and barriers, so the two interleave freely on one communicator:
//  1. for every owner c: quantize my copy of c's blocks and push codes + scales into slot[my rank] of rank c
//                                                                               barrier
//  2. dequantize my W slots, reduce in fp32 in rank order 0..W-1; FP8 all-gather: quantize the reduced block
//     again, write ITS dequantized values to my output (what every peer will compute from the same codes and
//     scale) and push codes + scale into gather[my rank] of every peer; exact all-gather: round once to T,
//     write my output, push the T values                                       barrier
//  3. decode the other owners' gather slots into my output.
// Everything a rank computes for block k depends only on the W copies of block k and on no rank-specific value,
// and every step is the same IEEE-rounded fp32 operation on every rank: results are bitwise identical across
// ranks, and equal to the CPU reference (tests/collectives/all_reduce_fp8wire_ref.cpp) bit for bit.
//
// Quantization of one block of B elements x_i (B = 32 or 128; the last block padded with zeros):
//   amax = max |x_i| (NaN if any x_i is NaN)
//   d    = fl32(amax / 448)                      the dequantization scale, sent on the wire (IEEE division)
//   m    = min(fl32(448 / amax), FLT_MAX)        the quantization multiplier (a zero block: 448/0 = Inf -> FLT_MAX)
//   q_i  = e4m3_rn_satfinite(fl32(x_i * m))      RNE, |.| > 448 saturates to 448, NaN -> 0x7F
//   x'_i = fl32(float(q_i) * d)
// A zero block has d = 0 and codes +-0, so it decodes to +-0. A block holding an Inf or NaN decodes to NaN
// throughout (Inf: d = Inf, m = 0; NaN: d = NaN). Below amax = 448 / FLT_MAX the capped multiplier leaves only an
// absolute accuracy of 2 amax (docs/all_reduce.md, error bound). Products are __fmul_rn and sums __fadd_rn, so nvcc cannot
// contract a dequantize-and-accumulate into an FMA (the reference rounds after every operation).
//
// Thread mapping: a thread handles groups of 16 consecutive elements (one 16-byte vector of codes), grid-stride
// over the groups of one owner's slice; the B/16 lanes of one block are consecutive lanes of one warp (the
// grid-stride steps are multiples of 32 and B/16 divides 32), so the block amax is a shuffle reduction. Loops
// whose bodies shuffle run warp-uniformly: lanes past the slice join the shuffles with zeros and store nothing
// (a slice ends on a block boundary, so a block's lanes are all in or all out).
// The barrier tag mixes the wire options into the byte count, so ranks that disagree on them (or call the exact
// algorithms for the same size) are reported as kMismatch instead of misreading each other's slots.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstddef>
#include <cstdint>

#include "collectives/all_reduce_fp8wire.h"
#include "collectives/all_reduce_kernels.cuh"
#include "quantize/quant_common.cuh"

namespace tpcomm::detail {

struct Fp8WireParams {
  const void* input;
  void* output;
  std::size_t count;         // elements
  int rank;
  int world;
  uint32_t size_tag;         // fp8_wire_size_tag()
  bool in_aligned;           // input 16-byte aligned
  bool out_aligned;          // output 16-byte aligned
  bool gather_fp8;           // all-gather phase in FP8 (else in T)
  int block_lanes;           // B / 16: lanes sharing one scale (8 or 2)
  std::size_t nblocks;       // Fp8WireLayout
  std::size_t chunk_blocks;
  std::size_t scale_offset;
  char* const* peer_ws;      // [world] workspace data bases
  std::size_t off;           // the two-shot region (CommImpl::off_two)
  std::size_t cap;           // bytes per slot (CommImpl::two_chunk_cap)
  ArState* state;
  device::BlockBarrier bar;
  device::SyncContext sync;
};

// Byte count mod 2^32 with the wire options in its top bits (see the header comment).
constexpr uint32_t fp8_wire_size_tag(std::size_t bytes, int block, bool gather_fp8) {
  return static_cast<uint32_t>(bytes) ^ 0xF8000000u ^ (block == 32 ? 0x01000000u : 0u) ^ (gather_fp8 ? 0u : 0x02000000u);
}

// ---- block scale, quantize, dequantize ---------------------------------------------------------------------------
struct Fp8WireScale {
  float mult;   // m
  float scale;  // d
};
// amax >= 0 or NaN. fminf returns FLT_MAX for a NaN quotient too (the block then decodes to NaN through d).
__device__ __forceinline__ Fp8WireScale fp8_wire_scale(float amax) {
  return {fminf(__fdiv_rn(kE4m3Max, amax), FLT_MAX), __fdiv_rn(amax, kE4m3Max)};
}

// max |v_i| as fp32 bits: |x| orders like its bit pattern, and every NaN pattern is above Inf.
__device__ __forceinline__ uint32_t fp8_wire_absmax_bits(const float (&v)[kFp8WireGroup]) {
  uint32_t a = 0;
#pragma unroll
  for (int i = 0; i < static_cast<int>(kFp8WireGroup); ++i) a = max(a, __float_as_uint(v[i]) & 0x7fffffffu);
  return a;
}
// The amax of a block over its `lanes` consecutive lanes (1, 2, 4 or 8; every lane of the warp must call it).
__device__ __forceinline__ float fp8_wire_block_amax(uint32_t bits, int lanes) {
  for (int o = 1; o < lanes; o <<= 1) bits = max(bits, __shfl_xor_sync(0xffffffffu, bits, o));
  return __uint_as_float(bits);
}

__device__ __forceinline__ uint4 fp8_wire_quant16(const float (&v)[kFp8WireGroup], float m) {
  using quant::detail::cvt2_fp8;
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k)
    w[k] = cvt2_fp8<0>(__fmul_rn(v[4 * k], m), __fmul_rn(v[4 * k + 1], m)) |
           (cvt2_fp8<0>(__fmul_rn(v[4 * k + 2], m), __fmul_rn(v[4 * k + 3], m)) << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ void fp8_wire_dequant16(uint4 q, float d, float (&v)[kFp8WireGroup]) {
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int k = 0; k < 4; ++k)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // e4m3 -> f16 is exact (every e4m3 value is an f16 value), f16 -> f32 too.
      const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>((w[k] >> (16 * h)) & 0xffffu), __NV_E4M3);
      const float2 f = __half22float2(__half2(r));
      v[4 * k + 2 * h] = __fmul_rn(f.x, d);
      v[4 * k + 2 * h + 1] = __fmul_rn(f.y, d);
    }
}

// acc (ranks 0..r-1) combined with rank r's b. Max/min spelled out rather than fmaxf/fminf, whose choice between
// -0 and +0 is unspecified: here a NaN operand yields the other one (as fmaxf) and equal operands (-0 == +0) keep
// the earlier rank's, so the CPU reference can match the sign of a zero bit for bit.
template <ReduceOp OP>
__device__ __forceinline__ float fp8_wire_combine(float a, float b) {
  if constexpr (OP == ReduceOp::kSum) return __fadd_rn(a, b);
  else if constexpr (OP == ReduceOp::kMax) return (b > a || a != a) ? b : a;
  else return (b < a || a != a) ? b : a;
}

// ---- groups of 16 elements of T (sizeof(T) 16-byte vectors) --------------------------------------------------------
template <typename T>
struct Fp8WireGroup {
  static constexpr int kVecs = static_cast<int>(kFp8WireGroup * sizeof(T) / 16);
  uint4 u[kVecs];
};
// Elements e0 .. e0+15 of `in` (those at or past count read as 0); e0 is a multiple of 16.
template <typename T>
__device__ __forceinline__ void fp8_wire_load(const T* in, std::size_t e0, std::size_t count, bool aligned, Fp8WireGroup<T>& g) {
#pragma unroll
  for (int k = 0; k < Fp8WireGroup<T>::kVecs; ++k) g.u[k] = load_vec(in, e0 / Vec<T>::kN + k, count, aligned);
}
template <typename T>
__device__ __forceinline__ void fp8_wire_store(T* out, std::size_t e0, std::size_t count, bool aligned, const Fp8WireGroup<T>& g) {
#pragma unroll
  for (int k = 0; k < Fp8WireGroup<T>::kVecs; ++k) store_vec(out, e0 / Vec<T>::kN + k, count, aligned, g.u[k]);
}
template <typename T>
__device__ __forceinline__ void fp8_wire_unpack(const Fp8WireGroup<T>& g, float (&v)[kFp8WireGroup]) {
  constexpr int N = Vec<T>::kN;
#pragma unroll
  for (int k = 0; k < Fp8WireGroup<T>::kVecs; ++k) {
    Vec<T> x;
    x.u = g.u[k];
#pragma unroll
    for (int i = 0; i < N; ++i) v[k * N + i] = to_float(x.e[i]);
  }
}
template <typename T>
__device__ __forceinline__ void fp8_wire_pack(const float (&v)[kFp8WireGroup], Fp8WireGroup<T>& g) {
  constexpr int N = Vec<T>::kN;
#pragma unroll
  for (int k = 0; k < Fp8WireGroup<T>::kVecs; ++k) {
    Vec<T> x;
#pragma unroll
    for (int i = 0; i < N; ++i) x.e[i] = from_float<T>(v[k * N + i]);
    g.u[k] = x.u;
  }
}

__device__ __forceinline__ void st_f32(char* p, float x) { *reinterpret_cast<float*>(p) = x; }
__device__ __forceinline__ float ld_f32_cg(const char* p) { return __ldcg(reinterpret_cast<const float*>(p)); }

// ---- the kernel --------------------------------------------------------------------------------------------------
template <typename T, ReduceOp OP, int kW>
__global__ void __launch_bounds__(512) all_reduce_two_shot_fp8wire(const __grid_constant__ Fp8WireParams p) {
  const GridPos gp = begin_launch();
  const std::size_t stride = gp.stride, tid = gp.tid;
  using Wd = World<kW>;
  using G = Fp8WireGroup<T>;
  constexpr int NV = G::kVecs;
  // Groups per thread in flight: 8 input vectors at W = 2 (as all_reduce_two_shot's 4 per rank and 2 ranks
  // unrolled), 4 otherwise. Phase 2 keeps 16 fp32 accumulators per group, hence 2 groups.
  constexpr int U = (kW == 2 ? 8 : 4) / NV > 0 ? (kW == 2 ? 8 : 4) / NV : 1;
  constexpr int U2 = 2;
  const int W = Wd::size(p);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const int bl = p.block_lanes;
  const int bl_shift = bl == 8 ? 3 : 1;        // group j belongs to block j >> bl_shift (bl is 8 or 2)
  const bool leader = (lane & (bl - 1)) == 0;  // the lane that stores its block's scale
  const std::size_t chunk_elems = p.chunk_blocks * static_cast<std::size_t>(bl) * kFp8WireGroup;
  auto groups_of = [&](int c) -> std::size_t {  // groups of owner c's slice (a multiple of bl)
    const std::size_t first = static_cast<std::size_t>(c) * p.chunk_blocks;
    if (first >= p.nblocks) return 0;
    const std::size_t nb = p.nblocks - first < p.chunk_blocks ? p.nblocks - first : p.chunk_blocks;
    return nb * static_cast<std::size_t>(bl);
  };
  BlockState* bs = &p.state->blocks[blockIdx.x];
  BlockState st = *bs;
  const std::size_t region = p.off + (st.seq & 1u) * 2 * static_cast<std::size_t>(W) * p.cap;
  const T* in = static_cast<const T*>(p.input);
  T* out = static_cast<T*>(p.output);

  // 1. Reduce-scatter: owner c's blocks of my input, quantized, into slot[my rank] of rank c.
#pragma unroll 1
  for (int c = 0; c < W; ++c) {
    const std::size_t ng = groups_of(c);
    const std::size_t e_c = static_cast<std::size_t>(c) * chunk_elems;
    char* dst = p.peer_ws[c] + region + static_cast<std::size_t>(p.rank) * p.cap;
    for (std::size_t base = tid; base - lane < ng; base += stride * U) {  // base - lane: warp-uniform
      G x[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const std::size_t j = base + u * stride;
        if (j < ng) fp8_wire_load(in, e_c + j * kFp8WireGroup, p.count, p.in_aligned, x[u]);
        else
#pragma unroll
          for (int k = 0; k < NV; ++k) x[u].u[k] = make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const std::size_t j = base + u * stride;
        if (j - lane >= ng) continue;  // no lane of this warp has a group here (uniform)
        float v[kFp8WireGroup];
        fp8_wire_unpack(x[u], v);
        const Fp8WireScale s = fp8_wire_scale(fp8_wire_block_amax(fp8_wire_absmax_bits(v), bl));
        if (j < ng) {
          st_v4(dst + j * 16, fp8_wire_quant16(v, s.mult));
          if (leader) st_f32(dst + p.scale_offset + (j >> bl_shift) * sizeof(float), s.scale);
        }
      }
    }
  }
  bool ok = device::block_barrier(p.sync, p.bar, ++st.epoch, p.size_tag);

  // 2. Reduce my slice from my W slots; write my output; push the result to every peer's gather[my rank].
  if (ok) {
    const char* slots = p.peer_ws[p.rank] + region;
    const std::size_t ng = groups_of(p.rank);
    const std::size_t e_own = static_cast<std::size_t>(p.rank) * chunk_elems;
    const std::size_t gather_off = region + (static_cast<std::size_t>(W) + p.rank) * p.cap;
    for (std::size_t base = tid; base - lane < ng; base += stride * U2) {
      float acc[U2][kFp8WireGroup];
#pragma unroll
      for (int u = 0; u < U2; ++u)
#pragma unroll
        for (int i = 0; i < static_cast<int>(kFp8WireGroup); ++i) acc[u][i] = 0.0f;
#pragma unroll
      for (int r = 0; r < Wd::kMax; ++r) {
        if (r >= W) break;
        const char* slot = slots + static_cast<std::size_t>(r) * p.cap;
        uint4 q[U2];
        float d[U2];
#pragma unroll
        for (int u = 0; u < U2; ++u) {
          const std::size_t j = base + u * stride;
          if (j < ng) {
            q[u] = ld_v4_cg(slot + j * 16);
            d[u] = ld_f32_cg(slot + p.scale_offset + (j >> bl_shift) * sizeof(float));
          }
        }
#pragma unroll
        for (int u = 0; u < U2; ++u) {
          const std::size_t j = base + u * stride;
          if (j >= ng) continue;
          float v[kFp8WireGroup];
          fp8_wire_dequant16(q[u], d[u], v);
#pragma unroll
          for (int i = 0; i < static_cast<int>(kFp8WireGroup); ++i) acc[u][i] = r == 0 ? v[i] : fp8_wire_combine<OP>(acc[u][i], v[i]);
        }
      }
#pragma unroll
      for (int u = 0; u < U2; ++u) {
        const std::size_t j = base + u * stride;
        if (j - lane >= ng) continue;  // uniform
        G y;
        if (p.gather_fp8) {
          const Fp8WireScale s = fp8_wire_scale(fp8_wire_block_amax(fp8_wire_absmax_bits(acc[u]), bl));
          if (j >= ng) continue;
          const uint4 qv = fp8_wire_quant16(acc[u], s.mult);
          float v[kFp8WireGroup];
          fp8_wire_dequant16(qv, s.scale, v);  // what every peer decodes from qv in step 3
          fp8_wire_pack(v, y);
#pragma unroll
          for (int q = 0; q < Wd::kMax; ++q) {
            if (q >= W) break;
            if (q == p.rank) continue;
            char* g = p.peer_ws[q] + gather_off;
            st_v4(g + j * 16, qv);
            if (leader) st_f32(g + p.scale_offset + (j >> bl_shift) * sizeof(float), s.scale);
          }
        } else {
          if (j >= ng) continue;
          fp8_wire_pack(acc[u], y);
#pragma unroll
          for (int q = 0; q < Wd::kMax; ++q) {
            if (q >= W) break;
            if (q == p.rank) continue;
            char* g = p.peer_ws[q] + gather_off + j * (16 * NV);
#pragma unroll
            for (int k = 0; k < NV; ++k) st_v4(g + k * 16, y.u[k]);
          }
        }
        fp8_wire_store(out, e_own + j * kFp8WireGroup, p.count, p.out_aligned, y);
      }
    }
    ok = device::block_barrier(p.sync, p.bar, ++st.epoch, p.size_tag);
  }

  // 3. The other owners' slices from my gather slots.
  if (ok) {
    const char* gather = p.peer_ws[p.rank] + region + static_cast<std::size_t>(W) * p.cap;
#pragma unroll 1
    for (int c = 0; c < W; ++c) {
      if (c == p.rank) continue;
      const std::size_t ng = groups_of(c);
      const std::size_t e_c = static_cast<std::size_t>(c) * chunk_elems;
      const char* src = gather + static_cast<std::size_t>(c) * p.cap;
      for (std::size_t base = tid; base < ng; base += stride * U) {
        if (p.gather_fp8) {
          uint4 q[U];
          float d[U];
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const std::size_t j = base + u * stride;
            if (j < ng) {
              q[u] = ld_v4_cg(src + j * 16);
              d[u] = ld_f32_cg(src + p.scale_offset + (j >> bl_shift) * sizeof(float));
            }
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const std::size_t j = base + u * stride;
            if (j >= ng) continue;
            float v[kFp8WireGroup];
            fp8_wire_dequant16(q[u], d[u], v);
            G y;
            fp8_wire_pack(v, y);
            fp8_wire_store(out, e_c + j * kFp8WireGroup, p.count, p.out_aligned, y);
          }
        } else {
          G y[U];
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const std::size_t j = base + u * stride;
            if (j < ng)
#pragma unroll
              for (int k = 0; k < NV; ++k) y[u].u[k] = ld_v4_cg(src + j * (16 * NV) + k * 16);
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const std::size_t j = base + u * stride;
            if (j < ng) fp8_wire_store(out, e_c + j * kFp8WireGroup, p.count, p.out_aligned, y[u]);
          }
        }
      }
    }
  }
  st.seq += 1;
  finish_block(bs, st);
}

}  // namespace tpcomm::detail
