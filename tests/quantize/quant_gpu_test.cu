// GPU bit-exactness suite: every quantize / dequantize kernel against the CPU reference (quant_ref.h) on random
// data and on edge-case blocks (zeros, all-equal, power-of-two amax, amax = fp8_max * 2^k, subnormals, values
// past saturation, +-Inf, NaN, largest and smallest exponents, rounding ties), plus dequantization of arbitrary
// codes including E8M0 scale codes 0 / 254 / 255. Outputs are compared byte for byte (NaN scales compared as
// "both NaN"). Output buffers are pre-filled with a sentinel, so unwritten bytes and unwritten padding fail.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "tpcomm/quantize.h"

using namespace tpcomm;
using namespace tpcomm::quant;

namespace {

#define CK(expr)                                                                                   \
  do {                                                                                             \
    cudaError_t e_ = (expr);                                                                       \
    if (e_ != cudaSuccess) throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(e_)); \
  } while (0)

template <class T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count, int fill = 0xcd) : n(count) {
    CK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)));
    CK(cudaMemset(p, fill, std::max<size_t>(1, n) * sizeof(T)));
  }
  Dev(const std::vector<T>& h) : Dev(h.size()) { CK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(p, h.data(), n * sizeof(T)))); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  std::vector<T> get() const {
    CK(cudaDeviceSynchronize());
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void put(const std::vector<T>& h) { CK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(p, h.data(), n * sizeof(T)))); }
};

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Byte/word-exact comparison; floats compare by bit pattern except that any NaN equals any NaN.
template <class T>
::testing::AssertionResult same(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " vs " << want.size();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    bool eq;
    if constexpr (std::is_same_v<T, float>) {
      eq = bits_of(got[i]) == bits_of(want[i]) || (std::isnan(got[i]) && std::isnan(want[i]));
    } else {
      eq = got[i] == want[i];
    }
    if (!eq && bad++ == 0) first = i;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  auto show = [](auto v) {
    char b[64];
    if constexpr (std::is_same_v<decltype(v), float>) std::snprintf(b, sizeof b, "%a", static_cast<double>(v));
    else std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return std::string(b);
  };
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << got.size() << " differ; first at " << first
                                       << ": got " << show(got[first]) << ", want " << show(want[first]);
}

uint16_t bf(float f) { return ref::float_to_bf16(f); }

// Random bf16 with a per-32x32-block magnitude, and (optionally) edge-case 32x32 blocks.
std::vector<uint16_t> make_input(int64_t rows, int64_t cols, uint64_t seed, bool edges, bool nonfinite) {
  test::SplitMix64 rng(seed);
  std::vector<uint16_t> v(static_cast<size_t>(rows * cols));
  const int64_t rb = (rows + 31) / 32, cb = (cols + 31) / 32;
  for (int64_t bi = 0; bi < rb; ++bi)
    for (int64_t bj = 0; bj < cb; ++bj) {
      const int base_e = static_cast<int>(rng.next() % 61) - 30;
      int pattern = -1;
      if (edges && rng.next() % 10 < 5) {
        pattern = static_cast<int>(rng.next() % 14);
        if (!nonfinite && (pattern == 7 || pattern == 8 || pattern == 9)) pattern = 0;
      }
      const float equal_v = static_cast<float>(rng.uniform(-3, 3)) * std::ldexp(1.0f, base_e);
      const int64_t special = static_cast<int64_t>(rng.next() % 1024);  // one position in the 32x32 block
      for (int64_t r = bi * 32; r < std::min(rows, bi * 32 + 32); ++r)
        for (int64_t c = bj * 32; c < std::min(cols, bj * 32 + 32); ++c) {
          const bool at_special = ((r % 32) * 32 + (c % 32)) == special || (r % 32 == c % 32);
          const double sgn = (rng.next() & 1) ? -1.0 : 1.0;
          float x = static_cast<float>(sgn * std::ldexp(rng.uniform(1.0, 2.0), base_e + static_cast<int>(rng.next() % 9) - 8));
          uint16_t b = bf(x);
          switch (pattern) {
            case 0: b = 0; break;                                                   // zeros
            case 1: b = bf(equal_v); break;                                         // all equal
            case 2: b = at_special ? bf(static_cast<float>(sgn) * std::ldexp(1.0f, base_e)) : bf(x * 0.25f); break;  // pow2 amax
            case 3: b = at_special ? bf(static_cast<float>(sgn) * 1.75f * std::ldexp(1.0f, base_e)) : bf(x * 0.5f); break;  // max * 2^k
            case 4: b = static_cast<uint16_t>((rng.next() & 0x807f) | 1); break;    // bf16 subnormals
            case 5: b = (rng.next() & 1) ? static_cast<uint16_t>(rng.next() & 0x807f) : static_cast<uint16_t>(0x0080 | (rng.next() & 0x807f)); break;
            case 6: b = static_cast<uint16_t>(0x7f00 | (rng.next() & 0x7f) | ((rng.next() & 1) << 15)); break;  // huge
            case 7: b = at_special ? 0x7f80 : b; break;                             // +Inf
            case 8: b = at_special ? 0xff80 : b; break;                             // -Inf
            case 9: b = at_special ? ((rng.next() & 1) ? 0x7fc0 : 0xffc1) : b; break;  // NaN
            case 10: b = (rng.next() & 1) ? static_cast<uint16_t>(0x7f7f ^ (rng.next() & 0x803f)) : static_cast<uint16_t>(0x0080 | (rng.next() & 0x807f)); break;
            case 11: b = at_special ? bf(equal_v) : ((rng.next() & 1) ? 0x8000 : 0x0000); break;  // +-0 and one value
            case 12: {  // rounding ties: multiples of 1/32 around an amax that is a power of two
              const int k = static_cast<int>(rng.next() % 64);
              b = at_special ? bf(static_cast<float>(sgn) * std::ldexp(1.0f, base_e + 3))
                             : bf(static_cast<float>(sgn) * std::ldexp(static_cast<float>(k + 32) / 32.0f, base_e));
              break;
            }
            case 13: b = at_special ? 0x7f7f : bf(x); break;                        // largest finite bf16 + normal data
            default: break;
          }
          v[static_cast<size_t>(r * cols + c)] = b;
        }
    }
  return v;
}

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  test::SplitMix64 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng.next());
  return v;
}

std::vector<uint32_t> to_u32(const std::vector<uint16_t>& v) { return std::vector<uint32_t>(v.begin(), v.end()); }

std::vector<uint32_t> download_out(void* p, size_t n, DType dt) {
  CK(cudaDeviceSynchronize());
  if (dt == DType::kFloat32) {
    std::vector<uint32_t> h(n);
    CK(cudaMemcpy(h.data(), p, n * 4, cudaMemcpyDeviceToHost));
    return h;
  }
  std::vector<uint16_t> h(n);
  CK(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost));
  return to_u32(h);
}

struct Shape3 {
  int64_t e, n, k;
};

}  // namespace

// ---- MXFP8 ----------------------------------------------------------------------------------------------------------
TEST(QuantGpu, Mxfp8QuantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  // {3, 160, 3072}: 24 column tiles per row tile and a partial last row tile, with several tiles per block in the
  // persistent rowwise + colwise kernel.
  const std::vector<Shape3> shapes = {{1, 256, 512}, {1, 96, 160},   {3, 96, 288},
                                      {2, 160, 64},  {4, 512, 1024}, {3, 160, 3072}};
  int case_no = 0;
  for (const Shape3& s : shapes) {
    const bool edges = s.e * s.n * s.k < (1 << 20);
    const auto x = make_input(s.e * s.n, s.k, seed + case_no++, edges, true);
    Dev<uint16_t> d_in(x);
    for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
      for (E8M0Rounding rnd : {E8M0Rounding::kFloor, E8M0Rounding::kRceil})
        for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
          const auto want = ref::mxfp8_quantize(x, s.e, s.n, s.k, fmt, rnd, lay, true, true);
          for (int outputs = 1; outputs <= 3; ++outputs) {
            const bool row = outputs & 1, col = outputs & 2;
            const std::string tag = std::to_string(s.e) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k) + " " +
                                    fp8_format_name(fmt) + " " + e8m0_rounding_name(rnd) + " " +
                                    scale_layout_name(lay) + (row ? " row" : "") + (col ? " col" : "");
            Dev<uint8_t> rd(want.row_data.size()), rs(want.row_scales.size()), cd(want.col_data.size()),
                cs(want.col_scales.size());
            Mxfp8QuantizeParams p;
            p.input = d_in.p;
            p.experts = s.e;
            p.rows = s.n;
            p.cols = s.k;
            p.format = fmt;
            p.rounding = rnd;
            p.scale_layout = lay;
            if (row) {
              p.row_data = rd.p;
              p.row_scales = rs.p;
            }
            if (col) {
              p.col_data = cd.p;
              p.col_scales = cs.p;
            }
            mxfp8_quantize(p, nullptr);
            if (row) {
              EXPECT_TRUE(same(rd.get(), want.row_data, tag + " row_data"));
              EXPECT_TRUE(same(rs.get(), want.row_scales, tag + " row_scales"));
            }
            if (col) {
              EXPECT_TRUE(same(cd.get(), want.col_data, tag + " col_data"));
              EXPECT_TRUE(same(cs.get(), want.col_scales, tag + " col_scales"));
            }
          }
        }
  }
}

TEST(QuantGpu, Mxfp8DequantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Shape3 s{3, 96, 160};
  const size_t nel = static_cast<size_t>(s.e * s.n * s.k);
  const auto data = random_bytes(nel, seed);
  Dev<uint8_t> d_data(data);
  for (Mxfp8Axis axis : {Mxfp8Axis::kRowwise, Mxfp8Axis::kColwise})
    for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
      const int64_t ns = axis == Mxfp8Axis::kRowwise ? mxfp8_row_scale_bytes(s.e, s.n, s.k, lay)
                                                     : mxfp8_col_scale_bytes(s.e, s.n, s.k, lay);
      auto scales = random_bytes(static_cast<size_t>(ns), seed + 7);
      for (size_t i = 0; i < scales.size(); ++i) {  // make sure the extreme codes appear
        if (i % 7 == 0) scales[i] = 0;
        if (i % 7 == 1) scales[i] = 254;
        if (i % 7 == 2) scales[i] = 255;
        if (i % 7 == 3) scales[i] = static_cast<uint8_t>(120 + i % 16);
      }
      Dev<uint8_t> d_sc(scales);
      for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
        for (DType dt : {DType::kBFloat16, DType::kFloat32}) {
          Dev<uint8_t> out(nel * dtype_size(dt));
          Mxfp8DequantizeParams p;
          p.data = d_data.p;
          p.scales = d_sc.p;
          p.axis = axis;
          p.experts = s.e;
          p.rows = s.n;
          p.cols = s.k;
          p.format = fmt;
          p.scale_layout = lay;
          p.output = out.p;
          p.output_dtype = dt;
          mxfp8_dequantize(p, nullptr);
          const auto want = ref::mxfp8_dequantize(data, scales, axis, s.e, s.n, s.k, fmt, lay, dt);
          EXPECT_TRUE(same(download_out(out.p, nel, dt), want,
                           std::string("mxfp8 dequant ") + (axis == Mxfp8Axis::kRowwise ? "row " : "col ") +
                               scale_layout_name(lay) + " " + fp8_format_name(fmt) + " " + dtype_name(dt)));
        }
    }
}

// ---- FP8 ------------------------------------------------------------------------------------------------------------
// The tile kernels run persistent blocks that walk several tiles each (tile.cuh) once a tensor has more 128x128 tiles
// than fit on the GPU at once (about 400 to 660 blocks on an H200); the shapes above all fit in one wave. These
// shapes have partial row and column tiles and several tiles per block.
TEST(QuantGpu, TileKernelsWithSeveralTilesPerBlock) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t E = 6, N = 1056, K = 2080;  // 6 x 9 x 17 = 918 tiles
  const auto x = make_input(E * N, K, seed + 900, true, true);
  Dev<uint16_t> d_in(x);
  struct MxCase {
    Fp8Format fmt;
    E8M0Rounding rnd;
    ScaleLayout lay;
    bool row, col;
  };
  for (const MxCase& c : {MxCase{Fp8Format::kE4M3, E8M0Rounding::kRceil, ScaleLayout::kLinear, true, true},
                          MxCase{Fp8Format::kE5M2, E8M0Rounding::kFloor, ScaleLayout::kSwizzled128x4, true, true},
                          MxCase{Fp8Format::kE4M3, E8M0Rounding::kFloor, ScaleLayout::kLinear, true, false},
                          MxCase{Fp8Format::kE4M3, E8M0Rounding::kFloor, ScaleLayout::kLinear, false, true}}) {
    const auto want = ref::mxfp8_quantize(x, E, N, K, c.fmt, c.rnd, c.lay, c.row, c.col);
    const std::string tag = std::string("mxfp8 ") + fp8_format_name(c.fmt) + " " + e8m0_rounding_name(c.rnd) + " " +
                            scale_layout_name(c.lay) + (c.row ? " row" : "") + (c.col ? " col" : "");
    Dev<uint8_t> rd(want.row_data.size()), rs(want.row_scales.size()), cd(want.col_data.size()),
        cs(want.col_scales.size());
    Mxfp8QuantizeParams p;
    p.input = d_in.p;
    p.experts = E;
    p.rows = N;
    p.cols = K;
    p.format = c.fmt;
    p.rounding = c.rnd;
    p.scale_layout = c.lay;
    if (c.row) {
      p.row_data = rd.p;
      p.row_scales = rs.p;
    }
    if (c.col) {
      p.col_data = cd.p;
      p.col_scales = cs.p;
    }
    mxfp8_quantize(p, nullptr);
    if (c.row) {
      EXPECT_TRUE(same(rd.get(), want.row_data, tag + " row_data"));
      EXPECT_TRUE(same(rs.get(), want.row_scales, tag + " row_scales"));
    }
    if (c.col) {
      EXPECT_TRUE(same(cd.get(), want.col_data, tag + " col_data"));
      EXPECT_TRUE(same(cs.get(), want.col_scales, tag + " col_scales"));
    }
  }
  const int64_t M = E * N;  // the same data as one 2-D (6336 x 2080) matrix
  for (Nvfp4Block blk : {Nvfp4Block::k1x16, Nvfp4Block::k16x16}) {
    const ScaleLayout lay = blk == Nvfp4Block::k1x16 ? ScaleLayout::kLinear : ScaleLayout::kSwizzled128x4;
    const float given = 1000.0f;
    Dev<float> d_given(std::vector<float>{given});
    const auto want = ref::nvfp4_quantize(x, M, K, blk, lay, &given);
    const std::string tag = std::string("nvfp4 ") + (blk == Nvfp4Block::k1x16 ? "1x16 " : "16x16 ") + scale_layout_name(lay);
    Dev<uint8_t> out(want.data.size()), sc(want.scales.size());
    Dev<float> sinv(1);
    Nvfp4QuantizeParams p;
    p.input = d_in.p;
    p.rows = M;
    p.cols = K;
    p.block = blk;
    p.scale_layout = lay;
    p.output = out.p;
    p.block_scales = sc.p;
    p.global_amax_in = d_given.p;
    p.global_scale_inv = sinv.p;
    nvfp4_quantize(p, nullptr);
    EXPECT_TRUE(same(out.get(), want.data, tag + " data"));
    EXPECT_TRUE(same(sc.get(), want.scales, tag + " scales"));
  }
  for (Fp8Scaling sc : {Fp8Scaling::kBlock1x128, Fp8Scaling::kBlock128x128}) {
    const auto want = ref::fp8_quantize(x, M, K, Fp8Format::kE4M3, sc, false, 0, nullptr);
    const std::string tag = std::string("fp8 ") + fp8_scaling_name(sc);
    Dev<uint8_t> out(want.data.size());
    Dev<float> scale(want.scale_inv.size(), 0);
    Fp8QuantizeParams p;
    p.input = d_in.p;
    p.rows = M;
    p.cols = K;
    p.format = Fp8Format::kE4M3;
    p.scaling = sc;
    p.output = out.p;
    p.scale_inv = scale.p;
    fp8_quantize(p, nullptr);
    EXPECT_TRUE(same(out.get(), want.data, tag + " data"));
    EXPECT_TRUE(same(scale.get(), want.scale_inv, tag + " scale_inv"));
  }
}

TEST(QuantGpu, Fp8QuantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  struct Case {
    int64_t rows, cols;
    bool nonfinite;
  };
  // 3001x72 and 4000x200: the one-pass colwise kernel runs clusters of 6 and 8 blocks (64-column strips; 12 and 16
  // with 128), the last block of a cluster short, the last strip partly outside the matrix.
  const std::vector<Case> cases = {{256, 512, false}, {200, 328, false}, {200, 328, true}, {3, 70008, false},
                                   {64, 8, true},     {3001, 72, false}, {4000, 200, true}};
  int case_no = 0;
  for (const Case& c : cases) {
    const auto x = make_input(c.rows, c.cols, seed + 100 + case_no++, true, c.nonfinite);
    Dev<uint16_t> d_in(x);
    for (Fp8Scaling sc : {Fp8Scaling::kTensorwise, Fp8Scaling::kRowwise, Fp8Scaling::kColwise, Fp8Scaling::kBlock1x128,
                          Fp8Scaling::kBlock128x128})
      for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
        for (bool pow2 : {false, true})
          for (int variant = 0; variant < 2; ++variant) {
            // variant 1: tensorwise with a given amax; 1x128 / 128x128 with a padded leading dimension.
            if (variant == 1 && (sc == Fp8Scaling::kRowwise || sc == Fp8Scaling::kColwise)) continue;
            int64_t ld = 0;
            if (variant == 1 && sc == Fp8Scaling::kBlock1x128) ld = c.rows + 5;
            if (variant == 1 && sc == Fp8Scaling::kBlock128x128) ld = (c.cols + 127) / 128 + 3;
            const float given_amax = 37.5f;
            const bool use_given = variant == 1 && sc == Fp8Scaling::kTensorwise;
            const auto want = ref::fp8_quantize(x, c.rows, c.cols, fmt, sc, pow2, ld, use_given ? &given_amax : nullptr);
            const std::string tag = std::to_string(c.rows) + "x" + std::to_string(c.cols) + " " + fp8_scaling_name(sc) +
                                    " " + fp8_format_name(fmt) + (pow2 ? " pow2" : "") + " v" + std::to_string(variant) +
                                    (c.nonfinite ? " nonfinite" : "");
            Dev<uint8_t> out(want.data.size());
            Dev<float> scale(want.scale_inv.size(), 0);
            Dev<float> amax_out(std::max<size_t>(1, static_cast<size_t>(c.cols)), 0xcd);
            Dev<float> amax_in(std::vector<float>{given_amax});
            Fp8QuantizeParams p;
            p.input = d_in.p;
            p.rows = c.rows;
            p.cols = c.cols;
            p.format = fmt;
            p.scaling = sc;
            p.pow2_scales = pow2;
            p.output = out.p;
            p.scale_inv = scale.p;
            p.scale_ld = ld;
            if (use_given) p.amax_in = amax_in.p;
            if (sc == Fp8Scaling::kTensorwise || sc == Fp8Scaling::kColwise) p.amax_out = amax_out.p;
            fp8_quantize(p, nullptr);
            EXPECT_TRUE(same(out.get(), want.data, tag + " data"));
            EXPECT_TRUE(same(scale.get(), want.scale_inv, tag + " scale_inv"));
            if (!want.amax.empty()) {
              auto got = amax_out.get();
              got.resize(want.amax.size());
              EXPECT_TRUE(same(got, want.amax, tag + " amax"));
            }
          }
  }
}

TEST(QuantGpu, Fp8DequantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t rows = 200, cols = 328;
  const auto q = random_bytes(static_cast<size_t>(rows * cols), seed);
  Dev<uint8_t> d_q(q);
  for (Fp8Scaling sc : {Fp8Scaling::kTensorwise, Fp8Scaling::kRowwise, Fp8Scaling::kColwise, Fp8Scaling::kBlock1x128,
                        Fp8Scaling::kBlock128x128}) {
    const int64_t ld = sc == Fp8Scaling::kBlock1x128 ? rows + 3 : (sc == Fp8Scaling::kBlock128x128 ? 4 : 0);
    std::vector<float> scales(static_cast<size_t>(fp8_scale_count(rows, cols, sc, ld)));
    test::SplitMix64 rng(seed + 1);
    for (auto& v : scales) v = static_cast<float>(std::ldexp(rng.uniform(0.5, 1.0), static_cast<int>(rng.next() % 200) - 100));
    scales[0] = std::ldexp(1.0f, -140);  // subnormal scale
    Dev<float> d_s(scales);
    for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
      for (DType dt : {DType::kBFloat16, DType::kFloat32}) {
        Dev<uint8_t> out(static_cast<size_t>(rows * cols) * dtype_size(dt));
        Fp8DequantizeParams p;
        p.input = d_q.p;
        p.rows = rows;
        p.cols = cols;
        p.format = fmt;
        p.scaling = sc;
        p.scale_inv = d_s.p;
        p.scale_ld = ld;
        p.output = out.p;
        p.output_dtype = dt;
        fp8_dequantize(p, nullptr);
        const auto want = ref::fp8_dequantize(q, rows, cols, fmt, sc, scales, ld, dt);
        EXPECT_TRUE(same(download_out(out.p, q.size(), dt), want,
                         std::string("fp8 dequant ") + fp8_scaling_name(sc) + " " + fp8_format_name(fmt) + " " +
                             dtype_name(dt)));
      }
  }
}

// ---- NVFP4 ----------------------------------------------------------------------------------------------------------
TEST(QuantGpu, Nvfp4QuantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  struct Case {
    int64_t rows, cols;
    bool nonfinite;
    bool given_amax;
  };
  const std::vector<Case> cases = {{256, 512, false, false}, {144, 80, false, false}, {144, 80, true, true},
                                   {256, 512, true, true},   {16, 16, false, false},  {64, 128, true, false}};
  int case_no = 0;
  for (const Case& c : cases) {
    const auto x = make_input(c.rows, c.cols, seed + 200 + case_no++, true, c.nonfinite);
    Dev<uint16_t> d_in(x);
    const float given = 1000.0f;
    Dev<float> d_given(std::vector<float>{given});
    for (Nvfp4Block blk : {Nvfp4Block::k1x16, Nvfp4Block::k16x16})
      for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
        const auto want = ref::nvfp4_quantize(x, c.rows, c.cols, blk, lay, c.given_amax ? &given : nullptr);
        const std::string tag = std::to_string(c.rows) + "x" + std::to_string(c.cols) +
                                (blk == Nvfp4Block::k1x16 ? " 1x16 " : " 16x16 ") + scale_layout_name(lay) +
                                (c.nonfinite ? " nonfinite" : "") + (c.given_amax ? " given-amax" : "");
        Dev<uint8_t> out(want.data.size()), sc(want.scales.size());
        Dev<float> amax_out(1), sinv(1);
        Nvfp4QuantizeParams p;
        p.input = d_in.p;
        p.rows = c.rows;
        p.cols = c.cols;
        p.block = blk;
        p.scale_layout = lay;
        p.output = out.p;
        p.block_scales = sc.p;
        if (c.given_amax) p.global_amax_in = d_given.p;
        else p.global_amax_out = amax_out.p;
        p.global_scale_inv = sinv.p;
        nvfp4_quantize(p, nullptr);
        EXPECT_TRUE(same(out.get(), want.data, tag + " data"));
        EXPECT_TRUE(same(sc.get(), want.scales, tag + " scales"));
        EXPECT_TRUE(same(sinv.get(), std::vector<float>{want.global_scale_inv}, tag + " global_scale_inv"));
        if (!c.given_amax) EXPECT_TRUE(same(amax_out.get(), std::vector<float>{want.amax}, tag + " amax"));
      }
  }
}

TEST(QuantGpu, Nvfp4DequantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t rows = 144, cols = 80;
  const auto q = random_bytes(static_cast<size_t>(rows * cols / 2), seed);
  Dev<uint8_t> d_q(q);
  for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
    const auto sc = random_bytes(static_cast<size_t>(nvfp4_scale_bytes(rows, cols, lay)), seed + 3);
    Dev<uint8_t> d_sc(sc);
    // Inf / NaN / overflowing global scales exercise the kernel's "no NaN possible" fast path decision.
    for (float g : {1.0f, 0.0123f, std::ldexp(1.0f, -130), INFINITY, NAN, 3.0e38f}) {
      Dev<float> d_g(std::vector<float>{g});
      for (DType dt : {DType::kBFloat16, DType::kFloat32}) {
        Dev<uint8_t> out(static_cast<size_t>(rows * cols) * dtype_size(dt));
        Nvfp4DequantizeParams p;
        p.input = d_q.p;
        p.block_scales = d_sc.p;
        p.global_scale_inv = d_g.p;
        p.rows = rows;
        p.cols = cols;
        p.scale_layout = lay;
        p.output = out.p;
        p.output_dtype = dt;
        nvfp4_dequantize(p, nullptr);
        const auto want = ref::nvfp4_dequantize(q, sc, g, rows, cols, lay, dt);
        EXPECT_TRUE(same(download_out(out.p, static_cast<size_t>(rows * cols), dt), want,
                         std::string("nvfp4 dequant ") + scale_layout_name(lay) + " " + dtype_name(dt)));
      }
    }
  }
}

// ---- amax, graphs, empty tensors ---------------------------------------------------------------------------------
TEST(QuantGpu, ComputeAmax) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (int64_t n : {8, 4096 + 8, 1 << 22}) {
    for (int kind = 0; kind < 3; ++kind) {
      auto x = make_input(1, n, seed + n + kind, false, false);
      if (kind == 1) x[static_cast<size_t>(n / 3)] = 0xffc1;   // NaN
      if (kind == 2) std::fill(x.begin(), x.end(), static_cast<uint16_t>(0x8000));  // -0
      Dev<uint16_t> d(x);
      Dev<float> a(1);
      compute_amax(d.p, DType::kBFloat16, n, a.p, nullptr);
      EXPECT_TRUE(same(a.get(), std::vector<float>{ref::amax_of(x.data(), n)}, "amax n=" + std::to_string(n)));
    }
  }
}

TEST(QuantGpu, CudaGraphCaptureAndReplay) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Shape3 s{4, 256, 384};
  auto x = make_input(s.e * s.n, s.k, seed, false, false);
  Dev<uint16_t> d_in(x);
  Dev<uint8_t> cd(static_cast<size_t>(s.e * s.n * s.k)), cs(static_cast<size_t>(mxfp8_col_scale_bytes(s.e, s.n, s.k, ScaleLayout::kSwizzled128x4)));
  Dev<uint8_t> fq(static_cast<size_t>(s.e * s.n * s.k));
  Dev<float> fs(1), famax(1);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Mxfp8QuantizeParams p;
  p.input = d_in.p;
  p.experts = s.e;
  p.rows = s.n;
  p.cols = s.k;
  p.scale_layout = ScaleLayout::kSwizzled128x4;
  p.col_data = cd.p;
  p.col_scales = cs.p;
  Fp8QuantizeParams f;
  f.input = d_in.p;
  f.rows = s.e * s.n;
  f.cols = s.k;
  f.scaling = Fp8Scaling::kTensorwise;
  f.output = fq.p;
  f.scale_inv = fs.p;
  f.amax_out = famax.p;
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  mxfp8_quantize(p, st);
  fp8_quantize(f, st);
  CK(cudaStreamEndCapture(st, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  for (int rep = 0; rep < 2; ++rep) {
    if (rep == 1) {
      x = make_input(s.e * s.n, s.k, seed + 1, true, false);
      d_in.put(x);
    }
    CK(cudaGraphLaunch(ge, st));
    CK(cudaStreamSynchronize(st));
    const auto want = ref::mxfp8_quantize(x, s.e, s.n, s.k, Fp8Format::kE4M3, E8M0Rounding::kRceil,
                                          ScaleLayout::kSwizzled128x4, false, true);
    EXPECT_TRUE(same(cd.get(), want.col_data, "graph col_data rep " + std::to_string(rep)));
    EXPECT_TRUE(same(cs.get(), want.col_scales, "graph col_scales rep " + std::to_string(rep)));
    const auto wf = ref::fp8_quantize(x, f.rows, f.cols, Fp8Format::kE4M3, Fp8Scaling::kTensorwise, false);
    EXPECT_TRUE(same(fq.get(), wf.data, "graph fp8 data rep " + std::to_string(rep)));
    EXPECT_TRUE(same(fs.get(), wf.scale_inv, "graph fp8 scale rep " + std::to_string(rep)));
  }
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(st);
}

TEST(QuantGpu, EmptyTensorsAreNoOps) {
  Mxfp8QuantizeParams p;
  p.rows = 0;
  p.cols = 64;
  p.col_data = reinterpret_cast<void*>(16);
  EXPECT_NO_THROW(mxfp8_quantize(p, nullptr));
  Fp8QuantizeParams f;
  f.rows = 0;
  f.cols = 16;
  EXPECT_NO_THROW(fp8_quantize(f, nullptr));
  CK(cudaDeviceSynchronize());
}
