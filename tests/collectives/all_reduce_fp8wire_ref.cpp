#include "collectives/all_reduce_fp8wire_ref.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "collectives/all_reduce_ref.h"
#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "tpcomm/error.h"

namespace tpcomm::test {

namespace {
constexpr float kE4m3MaxRef = 448.0f;
using quant::ref::fp8_decode;
using quant::ref::fp8_encode;

float combine(ReduceOp op, float a, float b) {
  switch (op) {
    case ReduceOp::kSum: return f32_add(a, b);
    // As the kernel (fp8_wire_combine): a NaN operand yields the other one, equal operands (-0, +0) keep a.
    case ReduceOp::kMax: return (b > a || std::isnan(a)) ? b : a;
    case ReduceOp::kMin: return (b < a || std::isnan(a)) ? b : a;
  }
  throw Error(ErrorCode::kInvalidArgument, "op: unknown in the reference");
}
}  // namespace

float f32_add(float a, float b) { return static_cast<float>(static_cast<double>(a) + static_cast<double>(b)); }
float f32_mul(float a, float b) { return static_cast<float>(static_cast<double>(a) * static_cast<double>(b)); }
float f32_div(float a, float b) { return static_cast<float>(static_cast<double>(a) / static_cast<double>(b)); }

Fp8WireScaleRef fp8_wire_scale_ref(float amax) {
  float m = f32_div(kE4m3MaxRef, amax);
  // min(m, FLT_MAX) as fminf computes it: a zero block's 448 / 0 = Inf and a NaN block's NaN both give FLT_MAX.
  if (std::isnan(m) || m > FLT_MAX) m = FLT_MAX;
  return {m, f32_div(amax, kE4m3MaxRef)};
}

float fp8_wire_amax_ref(const float* x, std::size_t n) {
  float a = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) return std::numeric_limits<float>::quiet_NaN();
    a = std::max(a, std::fabs(x[i]));
  }
  return a;
}

float fp8_wire_quantize_block(const float* x, std::size_t n, uint8_t* codes) {
  const Fp8WireScaleRef s = fp8_wire_scale_ref(fp8_wire_amax_ref(x, n));
  for (std::size_t i = 0; i < n; ++i) codes[i] = fp8_encode(f32_mul(x[i], s.mult), quant::Fp8Format::kE4M3);
  return s.scale;
}

void fp8_wire_dequantize_block(const uint8_t* codes, std::size_t n, float d, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = f32_mul(fp8_decode(codes[i], quant::Fp8Format::kE4M3), d);
}

std::vector<uint8_t> reference_fp8_wire_all_reduce(const std::vector<std::vector<uint8_t>>& inputs, std::size_t count,
                                                   DType dtype, ReduceOp op, int block, bool gather_fp8) {
  if (block != 32 && block != 128) throw Error(ErrorCode::kInvalidArgument, "block: 32 or 128 in the reference");
  const std::size_t B = static_cast<std::size_t>(block);
  const std::size_t nblocks = (count + B - 1) / B;
  std::vector<uint8_t> out(count * dtype_size(dtype));
  std::vector<float> x(B), v(B), acc(B);
  std::vector<uint8_t> q(B);
  for (std::size_t k = 0; k < nblocks; ++k) {
    for (std::size_t r = 0; r < inputs.size(); ++r) {
      for (std::size_t i = 0; i < B; ++i) {  // the last block padded with zeros, as on the wire
        const std::size_t e = k * B + i;
        x[i] = e < count ? static_cast<float>(load_element(inputs[r].data(), e, dtype)) : 0.0f;
      }
      const float d = fp8_wire_quantize_block(x.data(), B, q.data());
      fp8_wire_dequantize_block(q.data(), B, d, v.data());
      for (std::size_t i = 0; i < B; ++i) acc[i] = r == 0 ? v[i] : combine(op, acc[i], v[i]);
    }
    if (gather_fp8) {
      const float d = fp8_wire_quantize_block(acc.data(), B, q.data());
      fp8_wire_dequantize_block(q.data(), B, d, acc.data());
    }
    for (std::size_t i = 0; i < B && k * B + i < count; ++i) store_element(out.data(), k * B + i, dtype, acc[i]);
  }
  return out;
}

double fp8_wire_quant_bound(double abs_x, double a) {
  // Code space y = x * m with m ~ 448 / A; RNE to e4m3 errs by at most half a quantum: 2^-4 |y| for normal codes
  // (3 mantissa bits), 2^-10 below 2^-6 (subnormal quantum 2^-9); |y| above 448 (m rounded up) saturates by a few
  // fp32 ulps. Back in value space (times d ~ A / 448), plus the four fp32 roundings of m, x * m, d and q * d
  // (2^-24 each, relative) and an absolute floor for a subnormal d.
  // Below amax = 448 / FLT_MAX (~1.3e-36) the multiplier is capped at FLT_MAX: codes fall into e4m3's subnormal
  // range or to zero and only |x^ - x| <= |x^| + |x| <= 2 A remains.
  if (a < 448.0 / FLT_MAX) return 2 * a + std::ldexp(1.0, -140);
  return std::ldexp(abs_x, -4) + std::ldexp(a / 448.0, -10) + std::ldexp(abs_x + a, -20) + std::ldexp(1.0, -140);
}

std::vector<double> fp8_wire_error_bound(const std::vector<std::vector<uint8_t>>& inputs, std::size_t count, DType dtype,
                                         ReduceOp op, int block, bool gather_fp8) {
  const std::size_t B = static_cast<std::size_t>(block), W = inputs.size();
  const std::vector<double> exact = reference_all_reduce(inputs, count, dtype, op);
  std::vector<double> bound(count, 0.0), e1(count, 0.0);
  for (std::size_t k0 = 0; k0 < count; k0 += B) {
    const std::size_t k1 = std::min(count, k0 + B);
    for (std::size_t r = 0; r < W; ++r) {
      double a = 0;
      for (std::size_t i = k0; i < k1; ++i) a = std::max(a, std::fabs(load_element(inputs[r].data(), i, dtype)));
      for (std::size_t i = k0; i < k1; ++i) {
        const double x = std::fabs(load_element(inputs[r].data(), i, dtype));
        // Reduce-scatter quantization of rank r's copy, and the fp32 accumulation over W terms (each sum
        // rounding at most 2^-24 of a partial sum bounded by sum |x^_r| <= sum (|x_r| + A_r)). For max/min
        // |max x^ - max x| <= max |x^_r - x_r| is below the same sum.
        e1[i] += fp8_wire_quant_bound(x, a) + static_cast<double>(W) * std::ldexp(x + a, -22);
      }
    }
    double as = 0;  // bound on the amax of the reduced block before the all-gather quantization
    for (std::size_t i = k0; i < k1; ++i) as = std::max(as, std::fabs(exact[i]) + e1[i]);
    for (std::size_t i = k0; i < k1; ++i) {
      double v = std::fabs(exact[i]) + e1[i];
      double e2 = gather_fp8 ? fp8_wire_quant_bound(v, as) : 0.0;
      v += e2;
      double e3 = 0;  // the final rounding to dtype (an fp32 value: none for f32)
      if (dtype == DType::kBFloat16) e3 = std::ldexp(v, -8) + std::ldexp(1.0, -134);
      else if (dtype == DType::kFloat16) e3 = std::ldexp(v, -11) + std::ldexp(1.0, -25);
      bound[i] = e1[i] + e2 + e3;
    }
  }
  return bound;
}

Fp8WireError fp8_wire_error(const void* result, const std::vector<double>& exact, std::size_t count, DType dtype) {
  Fp8WireError e;
  double max_exact = 0, se = 0, sx = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const double d = load_element(result, i, dtype) - exact[i];
    e.max_abs = std::max(e.max_abs, std::isnan(d) ? INFINITY : std::fabs(d));
    max_exact = std::max(max_exact, std::fabs(exact[i]));
    se += d * d;
    sx += exact[i] * exact[i];
  }
  e.max_rel = max_exact > 0 ? e.max_abs / max_exact : e.max_abs;
  e.rms_rel = sx > 0 ? std::sqrt(se / sx) : std::sqrt(se);
  return e;
}

std::vector<uint8_t> make_fp8_wire_input(std::size_t count, DType dtype, uint64_t seed, int rank) {
  std::vector<uint8_t> out(count * dtype_size(dtype));
  SplitMix64 rng(seed ^ (0x5EEDF8F8ull * static_cast<uint64_t>(rank + 1)));
  const int e_range = dtype == DType::kFloat16 ? 12 : 24;
  double scale = 1;
  bool zero_block = false;
  for (std::size_t i = 0; i < count; ++i) {
    if (i % 32 == 0) {
      zero_block = rng.next() % 16 == 0;
      scale = std::ldexp(1.0, static_cast<int>(rng.next() % static_cast<uint64_t>(2 * e_range + 1)) - e_range);
    }
    const bool zero = zero_block || rng.next() % 64 == 0;
    store_element(out.data(), i, dtype, zero ? 0.0 : scale * rng.uniform(-1.0, 1.0));
  }
  return out;
}

Fp8WireCheck check_fp8_wire_result(const void* result, const std::vector<std::vector<uint8_t>>& inputs, std::size_t count,
                                   DType dtype, ReduceOp op, int block, bool gather_fp8) {
  Fp8WireCheck c;
  const std::size_t es = dtype_size(dtype);
  const std::vector<uint8_t> want = reference_fp8_wire_all_reduce(inputs, count, dtype, op, block, gather_fp8);
  const std::vector<double> exact = reference_all_reduce(inputs, count, dtype, op);
  const std::vector<double> bound = fp8_wire_error_bound(inputs, count, dtype, op, block, gather_fp8);
  const auto* got = static_cast<const uint8_t*>(result);
  for (std::size_t i = 0; i < count; ++i) {
    if (std::memcmp(got + i * es, want.data() + i * es, es) != 0) {
      if (c.mismatches < 3)
        c.first += "element " + std::to_string(i) + ": got " + std::to_string(load_element(got, i, dtype)) + ", reference " +
                   std::to_string(load_element(want.data(), i, dtype)) + "; ";
      ++c.mismatches;
    }
    const double err = std::fabs(load_element(got, i, dtype) - exact[i]);
    if (!(err <= bound[i])) ++c.over_bound;
  }
  c.error = fp8_wire_error(result, exact, count, dtype);
  return c;
}

}  // namespace tpcomm::test
