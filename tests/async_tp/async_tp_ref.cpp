#include "async_tp/async_tp_ref.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "collectives/all_reduce_ref.h"
#include "quantize/quant_ref.h"

namespace tpcomm::test {

double decode_element(const void* buf, std::size_t i, DType dtype) {
  switch (dtype) {
    case DType::kFloat8E4M3: return quant::ref::fp8_decode(static_cast<const uint8_t*>(buf)[i], quant::Fp8Format::kE4M3);
    case DType::kFloat8E5M2: return quant::ref::fp8_decode(static_cast<const uint8_t*>(buf)[i], quant::Fp8Format::kE5M2);
    default: return load_element(buf, i, dtype);
  }
}

void encode_element(void* buf, std::size_t i, DType dtype, double x) { store_element(buf, i, dtype, x); }

std::vector<double> ref_dequant_a(const std::vector<uint8_t>& codes, DType dtype, int64_t rows, int64_t K, RefScale mode,
                                  const std::vector<float>& scale, int64_t ld) {
  std::vector<double> out(static_cast<std::size_t>(rows * K));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k) {
      double v = decode_element(codes.data(), static_cast<std::size_t>(r * K + k), dtype);
      switch (mode) {
        case RefScale::kTensor: v *= scale[0]; break;
        case RefScale::kRow: v *= scale[r]; break;
        case RefScale::kBlock: v *= scale[(k / 128) * ld + r]; break;
        default: break;
      }
      out[r * K + k] = v;
    }
  return out;
}

std::vector<double> ref_dequant_b(const std::vector<uint8_t>& codes, DType dtype, int64_t K, int64_t N, bool col_major,
                                  RefScale mode, const std::vector<float>& scale, int64_t ld) {
  std::vector<double> out(static_cast<std::size_t>(K * N));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const std::size_t idx = static_cast<std::size_t>(col_major ? n * K + k : k * N + n);
      double v = decode_element(codes.data(), idx, dtype);
      switch (mode) {
        case RefScale::kTensor: v *= scale[0]; break;
        case RefScale::kRow: v *= scale[n]; break;
        case RefScale::kBlock: v *= scale[(n / 128) * ld + k / 128]; break;
        default: break;
      }
      out[k * N + n] = v;
    }
  return out;
}

std::vector<double> ref_matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t M, int64_t K, int64_t N) {
  std::vector<double> c(static_cast<std::size_t>(M * N), 0.0);
  for (int64_t m = 0; m < M; ++m) {
    double* row = c.data() + m * N;
    for (int64_t k = 0; k < K; ++k) {
      const double av = a[m * K + k];
      if (av == 0.0) continue;
      const double* brow = b.data() + k * N;
      for (int64_t n = 0; n < N; ++n) row[n] += av * brow[n];
    }
  }
  return c;
}

double rel_error(const void* x, DType dtype, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double v = decode_element(x, i, dtype);
    if (!std::isfinite(v)) return std::numeric_limits<double>::infinity();
    num += (v - ref[i]) * (v - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace tpcomm::test
