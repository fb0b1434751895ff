#include "collectives/all_reduce_ref.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/test_util.h"
#include "tpcomm/error.h"

namespace tpcomm::test {

double load_element(const void* buf, std::size_t i, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<const float*>(buf)[i];
    case DType::kFloat16: return __half2float(static_cast<const __half*>(buf)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(buf)[i]);
    default: throw Error(ErrorCode::kInvalidArgument, "dtype: unsupported in the reference");
  }
}

void store_element(void* buf, std::size_t i, DType dtype, double x) {
  switch (dtype) {
    case DType::kFloat32: static_cast<float*>(buf)[i] = static_cast<float>(x); break;
    case DType::kFloat16: static_cast<__half*>(buf)[i] = __float2half_rn(static_cast<float>(x)); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(buf)[i] = __float2bfloat16_rn(static_cast<float>(x)); break;
    default: throw Error(ErrorCode::kInvalidArgument, "dtype: unsupported in the reference");
  }
}

std::vector<uint8_t> make_input(std::size_t count, DType dtype, uint64_t seed, int rank) {
  std::vector<uint8_t> out(count * dtype_size(dtype));
  SplitMix64 rng(seed ^ (0xA5A5A5A5ull * static_cast<uint64_t>(rank + 1)));
  for (std::size_t i = 0; i < count; ++i) store_element(out.data(), i, dtype, rng.uniform(-1.0, 1.0));
  return out;
}

std::vector<double> reference_all_reduce(const std::vector<std::vector<uint8_t>>& inputs, std::size_t count, DType dtype,
                                         ReduceOp op) {
  std::vector<double> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    double acc = load_element(inputs[0].data(), i, dtype);
    for (std::size_t r = 1; r < inputs.size(); ++r) {
      const double x = load_element(inputs[r].data(), i, dtype);
      if (op == ReduceOp::kSum) acc += x;
      else if (op == ReduceOp::kMax) acc = std::max(acc, x);
      else acc = std::min(acc, x);
    }
    out[i] = acc;
  }
  return out;
}

double all_reduce_tolerance(double ref, DType dtype, int world) {
  const double a = std::fabs(ref);
  switch (dtype) {
    case DType::kBFloat16: return a * std::ldexp(1.0, -7) + 1e-30;        // one bf16 ulp (rounding is at most half)
    case DType::kFloat16: return a * std::ldexp(1.0, -10) + 6e-8;         // one f16 ulp, plus the smallest subnormal
    default: return (a + world) * std::ldexp(1.0, -22);                   // fp32 accumulation over W terms
  }
}

std::vector<double> reference_abs_sum(const std::vector<std::vector<uint8_t>>& inputs, std::size_t count, DType dtype) {
  std::vector<double> out(count, 0.0);
  for (const auto& in : inputs)
    for (std::size_t i = 0; i < count; ++i) out[i] += std::fabs(load_element(in.data(), i, dtype));
  return out;
}

double stepwise_rounding_slack(double abs_sum, DType dtype, int world) {
  const int extra = world - 2;
  if (extra <= 0) return 0.0;
  switch (dtype) {
    case DType::kBFloat16: return extra * abs_sum * std::ldexp(1.0, -8);
    case DType::kFloat16: return extra * (abs_sum * std::ldexp(1.0, -11) + 6e-8);
    default: return extra * abs_sum * std::ldexp(1.0, -24);
  }
}

}  // namespace tpcomm::test
