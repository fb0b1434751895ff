// Soak of the quantize ops on one GPU: a long run of calls on one stream, each with a new op, shape and setting
// (FP8 every scaling and the transposed colwise output, FP8 dequantize, MXFP8 rowwise / colwise / both / 3-D,
// MXFP8 dequantize, NVFP4 1x16 / 16x16 with given or computed amax, NVFP4 dequantize, compute_amax), with no host
// synchronization between checks. Every N-th call writes into poisoned check buffers and is compared byte for byte
// with the CPU reference (tests/quantize/quant_ref.h); the others write scratch buffers. Device memory is read with
// cudaMemGetInfo after the first window and at the end: the free memory must not shrink (no growth per call).
//
//   TPCOMM_SOAK_CALLS=<n>        calls (default 2000; scripts/soak.sh runs 100000)
//   TPCOMM_SOAK_CHECK_EVERY=<n>  N (default 50)
//   TPCOMM_SOAK_SEED=<n|0xhex>   replays a run (printed on failure)
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "tpcomm/error.h"
#include "tpcomm/quantize.h"

using namespace tpcomm;
using namespace tpcomm::quant;

namespace {

#define CK(expr)                                                                                            \
  do {                                                                                                      \
    cudaError_t e_ = (expr);                                                                                \
    if (e_ != cudaSuccess) throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(e_)); \
  } while (0)

int64_t env_int(const char* name, int64_t def) {
  const char* e = std::getenv(name);
  if (e == nullptr || e[0] == '\0') return def;
  const long long v = std::strtoll(e, nullptr, 0);
  return v > 0 ? v : def;
}

// Shapes: up to 512 x 1024 elements per call (a call's CPU reference stays in the milliseconds).
constexpr int64_t kMaxRows = 512, kMaxCols = 1024, kMaxElems = kMaxRows * kMaxCols;
constexpr int kInputSlots = 4;
const float kGivenAmax[] = {0.75f, 37.5f, 1000.0f, 3.5f};

struct DevBytes {
  uint8_t* p = nullptr;
  size_t n = 0;
  explicit DevBytes(size_t bytes) : n(bytes) { CK(cudaMalloc(&p, bytes)); }
  ~DevBytes() { cudaFree(p); }
  DevBytes(const DevBytes&) = delete;
  DevBytes& operator=(const DevBytes&) = delete;
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(p);
  }
};

// Every output a call may write, at the largest size any call needs.
struct Outputs {
  DevBytes d0{kMaxElems * 4}, d1{kMaxElems}, s0{kMaxElems / 8 + 65536}, s1{kMaxElems / 8 + 65536}, amax{kMaxCols * 4};
  void poison(cudaStream_t st) {
    for (DevBytes* b : {&d0, &d1, &s0, &s1, &amax}) CK(cudaMemsetAsync(b->p, 0xcd, b->n, st));
  }
};

std::vector<uint8_t> download(const DevBytes& b, size_t n) {
  std::vector<uint8_t> h(n);
  CK(cudaMemcpy(h.data(), b.p, n, cudaMemcpyDeviceToHost));
  return h;
}
template <class T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}
std::vector<uint8_t> u32_as(const std::vector<uint32_t>& v, DType dt) {  // a dequant reference in storage form
  if (dt == DType::kFloat32) return bytes_of(v);
  std::vector<uint16_t> h(v.begin(), v.end());
  return bytes_of(h);
}

// Random bf16 with a per-row-block magnitude (2^-20 .. 2^20), finite, no NaN.
std::vector<uint16_t> random_input(uint64_t seed) {
  test::SplitMix64 rng(seed);
  std::vector<uint16_t> v(kMaxElems);
  for (int64_t i = 0; i < kMaxElems; i += 64) {
    const int e = static_cast<int>(rng.next() % 41) - 20;
    for (int64_t j = i; j < i + 64; ++j) {
      const double m = rng.uniform(-2.0, 2.0) * std::ldexp(1.0, e - static_cast<int>(rng.next() % 6));
      v[j] = ref::float_to_bf16(static_cast<float>(m));
    }
  }
  return v;
}

struct Soak {
  uint64_t seed;
  cudaStream_t st = nullptr;
  std::vector<std::vector<uint16_t>> in_h;                 // input slots (host)
  std::vector<std::unique_ptr<DevBytes>> in_d;             // input slots (device)
  std::vector<uint8_t> codes_h, scales_h;                  // dequant inputs: random codes, random block scales
  std::vector<float> fscales_h;                            // FP8 dequant scales (positive, normal)
  std::unique_ptr<DevBytes> codes_d, scales_d, fscales_d, given_d;
  Outputs scratch, check;
  int64_t checks = 0, mismatches = 0;
  std::string first_mismatch;

  explicit Soak(uint64_t s) : seed(s) {
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    for (int k = 0; k < kInputSlots; ++k) {
      in_h.push_back(random_input(seed + 101 * k));
      in_d.push_back(std::make_unique<DevBytes>(kMaxElems * 2));
      CK(static_cast<cudaError_t>(test::copy_to_device(in_d.back()->p, in_h.back().data(), kMaxElems * 2)));
    }
    test::SplitMix64 rng(seed ^ 0x5eed);
    codes_h.resize(kMaxElems);
    for (auto& b : codes_h) b = static_cast<uint8_t>(rng.next());
    scales_h.resize(kMaxElems / 8 + 65536);
    for (auto& b : scales_h) b = static_cast<uint8_t>(rng.next() % 254);  // E8M0 / E4M3 codes, no NaN code 255
    fscales_h.resize(16384);
    for (auto& f : fscales_h) f = static_cast<float>(std::ldexp(rng.uniform(0.5, 1.0), static_cast<int>(rng.next() % 40) - 20));
    codes_d = std::make_unique<DevBytes>(codes_h.size());
    scales_d = std::make_unique<DevBytes>(scales_h.size());
    fscales_d = std::make_unique<DevBytes>(fscales_h.size() * 4);
    given_d = std::make_unique<DevBytes>(sizeof kGivenAmax);
    CK(static_cast<cudaError_t>(test::copy_to_device(codes_d->p, codes_h.data(), codes_h.size())));
    CK(static_cast<cudaError_t>(test::copy_to_device(scales_d->p, scales_h.data(), scales_h.size())));
    CK(static_cast<cudaError_t>(test::copy_to_device(fscales_d->p, fscales_h.data(), fscales_h.size() * 4)));
    CK(static_cast<cudaError_t>(test::copy_to_device(given_d->p, kGivenAmax, sizeof kGivenAmax)));
  }
  ~Soak() {
    cudaStreamSynchronize(st);
    cudaStreamDestroy(st);
  }

  void compare(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want, const std::string& what) {
    if (got == want) return;
    ++mismatches;
    if (first_mismatch.empty()) {
      size_t i = 0;
      while (i < got.size() && got[i] == want[i]) ++i;
      char b[96];
      std::snprintf(b, sizeof b, " (first differing byte %zu of %zu)", i, want.size());
      first_mismatch = what + b;
    }
  }

  // Call i: chooses an op and its settings from (seed, i), enqueues it into `o`; when `verify`, synchronizes and
  // compares o with the reference.
  void call(int64_t i, bool verify) {
    test::SplitMix64 rng(seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1)));
    auto u = [&](uint64_t n) { return static_cast<int64_t>(rng.next() % n); };
    Outputs& o = verify ? check : scratch;
    if (verify) o.poison(st);
    const int slot = static_cast<int>(u(kInputSlots));
    const std::vector<uint16_t>& xh = in_h[slot];
    const void* x = in_d[slot]->p;
    const int kind = static_cast<int>(u(7));
    const Fp8Format fmt = u(2) ? Fp8Format::kE5M2 : Fp8Format::kE4M3;
    const ScaleLayout lay = u(2) ? ScaleLayout::kSwizzled128x4 : ScaleLayout::kLinear;
    const DType dq = u(2) ? DType::kFloat32 : DType::kBFloat16;
    std::string tag = "call " + std::to_string(i) + " ";
    auto prefix = [&](int64_t n) { return std::vector<uint16_t>(xh.begin(), xh.begin() + n); };
    switch (kind) {
      case 0: {  // FP8 quantize
        const auto sc = static_cast<Fp8Scaling>(u(5));
        const bool transposed = sc == Fp8Scaling::kColwise && u(3) == 0;
        const int64_t rows = transposed ? 16 * (1 + u(kMaxRows / 16)) : 1 + u(kMaxRows);
        const int64_t cols = 8 * (1 + u(kMaxCols / 8));
        const bool given = sc == Fp8Scaling::kTensorwise && u(2);
        const int gi = static_cast<int>(u(4));
        Fp8QuantizeParams p;
        p.input = x;
        p.rows = rows;
        p.cols = cols;
        p.format = fmt;
        p.scaling = sc;
        p.pow2_scales = u(4) == 0;
        p.output = o.d1.p;
        p.scale_inv = o.s0.as<float>();
        if (given) p.amax_in = given_d->as<float>() + gi;
        if ((sc == Fp8Scaling::kTensorwise && !given) || sc == Fp8Scaling::kColwise) p.amax_out = o.amax.as<float>();
        p.transpose_output = transposed;
        fp8_quantize(p, st);
        if (!verify) return;
        tag += std::string("fp8 ") + fp8_scaling_name(sc) + (transposed ? " transposed " : " ") + fp8_format_name(fmt) +
               " " + std::to_string(rows) + "x" + std::to_string(cols);
        const auto want = ref::fp8_quantize(prefix(rows * cols), rows, cols, fmt, sc, p.pow2_scales, 0,
                                            given ? &kGivenAmax[gi] : nullptr);
        CK(cudaStreamSynchronize(st));
        std::vector<uint8_t> data = download(o.d1, want.data.size());
        if (transposed) {  // (cols, rows) -> row-major (rows, cols)
          std::vector<uint8_t> t(data.size());
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) t[r * cols + c] = data[c * rows + r];
          data.swap(t);
        }
        compare(data, want.data, tag + " data");
        compare(download(o.s0, want.scale_inv.size() * 4), bytes_of(want.scale_inv), tag + " scale_inv");
        if (p.amax_out) compare(download(o.amax, want.amax.size() * 4), bytes_of(want.amax), tag + " amax");
        break;
      }
      case 1: {  // FP8 dequantize
        const auto sc = static_cast<Fp8Scaling>(u(5));
        const int64_t rows = 1 + u(kMaxRows), cols = 8 * (1 + u(kMaxCols / 8));
        const int64_t ns = fp8_scale_count(rows, cols, sc);
        Fp8DequantizeParams p;
        p.input = codes_d->p;
        p.rows = rows;
        p.cols = cols;
        p.format = fmt;
        p.scaling = sc;
        p.scale_inv = fscales_d->as<float>();
        p.output = o.d0.p;
        p.output_dtype = dq;
        fp8_dequantize(p, st);
        if (!verify) return;
        tag += std::string("fp8 dequant ") + fp8_scaling_name(sc) + " " + std::to_string(rows) + "x" + std::to_string(cols);
        const std::vector<uint8_t> q(codes_h.begin(), codes_h.begin() + rows * cols);
        const std::vector<float> s(fscales_h.begin(), fscales_h.begin() + ns);
        const auto want = u32_as(ref::fp8_dequantize(q, rows, cols, fmt, sc, s, 0, dq), dq);
        CK(cudaStreamSynchronize(st));
        compare(download(o.d0, want.size()), want, tag);
        break;
      }
      case 2: {  // MXFP8 quantize (3-D colwise sometimes)
        const int outputs = 1 + static_cast<int>(u(3));
        const bool row = outputs & 1, col = outputs & 2;
        const int64_t e = col && !row && u(3) == 0 ? 1 + u(4) : 1;
        const int64_t n = 32 * (1 + u(kMaxRows / 32 / e)), k = (row ? 32 : 8) * (1 + u(kMaxCols / (row ? 32 : 8)));
        Mxfp8QuantizeParams p;
        p.input = x;
        p.experts = e;
        p.rows = n;
        p.cols = k;
        p.format = fmt;
        p.rounding = u(2) ? E8M0Rounding::kFloor : E8M0Rounding::kRceil;
        p.scale_layout = lay;
        if (row) p.row_data = o.d0.p, p.row_scales = o.s0.p;
        if (col) p.col_data = o.d1.p, p.col_scales = o.s1.p;
        mxfp8_quantize(p, st);
        if (!verify) return;
        tag += std::string("mxfp8") + (row ? " row" : "") + (col ? " col" : "") + " " + std::to_string(e) + "x" +
               std::to_string(n) + "x" + std::to_string(k) + " " + scale_layout_name(lay);
        const auto want = ref::mxfp8_quantize(prefix(e * n * k), e, n, k, fmt, p.rounding, lay, row, col);
        CK(cudaStreamSynchronize(st));
        if (row) {
          compare(download(o.d0, want.row_data.size()), want.row_data, tag + " row_data");
          compare(download(o.s0, want.row_scales.size()), want.row_scales, tag + " row_scales");
        }
        if (col) {
          compare(download(o.d1, want.col_data.size()), want.col_data, tag + " col_data");
          compare(download(o.s1, want.col_scales.size()), want.col_scales, tag + " col_scales");
        }
        break;
      }
      case 3: {  // MXFP8 dequantize
        const Mxfp8Axis axis = u(2) ? Mxfp8Axis::kColwise : Mxfp8Axis::kRowwise;
        const int64_t n = 32 * (1 + u(kMaxRows / 32)), k = 32 * (1 + u(kMaxCols / 32));
        Mxfp8DequantizeParams p;
        p.data = codes_d->p;
        p.scales = scales_d->p;
        p.axis = axis;
        p.rows = n;
        p.cols = k;
        p.format = fmt;
        p.scale_layout = lay;
        p.output = o.d0.p;
        p.output_dtype = dq;
        mxfp8_dequantize(p, st);
        if (!verify) return;
        tag += std::string("mxfp8 dequant ") + (axis == Mxfp8Axis::kRowwise ? "row " : "col ") + std::to_string(n) + "x" +
               std::to_string(k) + " " + scale_layout_name(lay);
        const int64_t sb = axis == Mxfp8Axis::kRowwise ? mxfp8_row_scale_bytes(1, n, k, lay) : mxfp8_col_scale_bytes(1, n, k, lay);
        const std::vector<uint8_t> q(codes_h.begin(), codes_h.begin() + n * k), s(scales_h.begin(), scales_h.begin() + sb);
        const auto want = u32_as(ref::mxfp8_dequantize(q, s, axis, 1, n, k, fmt, lay, dq), dq);
        CK(cudaStreamSynchronize(st));
        compare(download(o.d0, want.size()), want, tag);
        break;
      }
      case 4: {  // NVFP4 quantize
        const Nvfp4Block blk = u(2) ? Nvfp4Block::k16x16 : Nvfp4Block::k1x16;
        const int64_t rows = blk == Nvfp4Block::k16x16 ? 16 * (1 + u(kMaxRows / 16)) : 1 + u(kMaxRows);
        const int64_t cols = 16 * (1 + u(kMaxCols / 16));
        const bool given = u(2);
        const int gi = static_cast<int>(u(4));
        Nvfp4QuantizeParams p;
        p.input = x;
        p.rows = rows;
        p.cols = cols;
        p.block = blk;
        p.scale_layout = lay;
        p.output = o.d1.p;
        p.block_scales = o.s0.p;
        if (given) p.global_amax_in = given_d->as<float>() + gi;
        else p.global_amax_out = o.amax.as<float>();
        p.global_scale_inv = o.amax.as<float>() + 4;
        nvfp4_quantize(p, st);
        if (!verify) return;
        tag += std::string("nvfp4 ") + (blk == Nvfp4Block::k1x16 ? "1x16 " : "16x16 ") + scale_layout_name(lay) +
               (given ? " given " : " ") + std::to_string(rows) + "x" + std::to_string(cols);
        const auto want = ref::nvfp4_quantize(prefix(rows * cols), rows, cols, blk, lay, given ? &kGivenAmax[gi] : nullptr);
        CK(cudaStreamSynchronize(st));
        compare(download(o.d1, want.data.size()), want.data, tag + " data");
        compare(download(o.s0, want.scales.size()), want.scales, tag + " scales");
        const auto sc = download(o.amax, 20);
        compare(std::vector<uint8_t>(sc.begin() + 16, sc.begin() + 20), bytes_of(std::vector<float>{want.global_scale_inv}),
                tag + " global_scale_inv");
        if (!given) compare(std::vector<uint8_t>(sc.begin(), sc.begin() + 4), bytes_of(std::vector<float>{want.amax}), tag + " amax");
        break;
      }
      case 5: {  // NVFP4 dequantize
        const int64_t rows = 1 + u(kMaxRows), cols = 16 * (1 + u(kMaxCols / 16));
        const int gi = static_cast<int>(u(4));
        Nvfp4DequantizeParams p;
        p.input = codes_d->p;
        p.block_scales = scales_d->p;
        p.global_scale_inv = given_d->as<float>() + gi;
        p.rows = rows;
        p.cols = cols;
        p.scale_layout = lay;
        p.output = o.d0.p;
        p.output_dtype = dq;
        nvfp4_dequantize(p, st);
        if (!verify) return;
        tag += std::string("nvfp4 dequant ") + std::to_string(rows) + "x" + std::to_string(cols) + " " + scale_layout_name(lay);
        const std::vector<uint8_t> q(codes_h.begin(), codes_h.begin() + rows * cols / 2);
        const std::vector<uint8_t> s(scales_h.begin(), scales_h.begin() + nvfp4_scale_bytes(rows, cols, lay));
        const auto want = u32_as(ref::nvfp4_dequantize(q, s, kGivenAmax[gi], rows, cols, lay, dq), dq);
        CK(cudaStreamSynchronize(st));
        compare(download(o.d0, want.size()), want, tag);
        break;
      }
      default: {  // compute_amax
        const int64_t n = 8 * (1 + u(kMaxElems / 8));
        compute_amax(x, DType::kBFloat16, n, o.amax.as<float>(), st);
        if (!verify) return;
        tag += "compute_amax " + std::to_string(n);
        const float want = ref::amax_of(xh.data(), n);
        CK(cudaStreamSynchronize(st));
        compare(download(o.amax, 4), bytes_of(std::vector<float>{want}), tag);
        break;
      }
    }
    ++checks;
  }
};

size_t free_bytes() {
  size_t f = 0, t = 0;
  CK(cudaMemGetInfo(&f, &t));
  return f;
}

TEST(QuantSoak, ManyCallsChangingEveryCallCheckedEveryN) {
  const int64_t calls = env_int("TPCOMM_SOAK_CALLS", 2000);
  const int64_t every = env_int("TPCOMM_SOAK_CHECK_EVERY", 50);
  const uint64_t seed = static_cast<uint64_t>(env_int("TPCOMM_SOAK_SEED", static_cast<int64_t>(test::fresh_seed() >> 1)));
  SCOPED_TRACE("TPCOMM_SOAK_SEED=" + std::to_string(seed));
  Soak s(seed);
  size_t free_after_first = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < calls; ++i) {
    try {
      s.call(i, i % every == every - 1 || i == calls - 1);
    } catch (const std::exception& e) {
      FAIL() << "call " << i << " threw: " << e.what();
    }
    if (i == std::min(every, calls) - 1) free_after_first = free_bytes();
  }
  CK(cudaStreamSynchronize(s.st));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const size_t free_end = free_bytes();
  EXPECT_EQ(s.mismatches, 0) << s.first_mismatch;
  EXPECT_GE(s.checks, calls / every);
  // Free device memory may not shrink between the end of the first window and the end of the run (allocation
  // granularity is 2 MiB; nothing the ops do may allocate).
  EXPECT_GE(free_end + (size_t(2) << 20), free_after_first)
      << "device memory grew by " << (free_after_first - free_end) << " bytes over " << calls << " calls";
  std::printf("[ soak     ] quantize: %lld calls in %.1f s, %lld checked against the CPU reference, %lld mismatches; "
              "free device memory %zu -> %zu bytes (seed %llu)\n",
              static_cast<long long>(calls), secs, static_cast<long long>(s.checks), static_cast<long long>(s.mismatches),
              free_after_first, free_end, static_cast<unsigned long long>(seed));
}

}  // namespace
