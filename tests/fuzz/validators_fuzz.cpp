// libFuzzer target over the host validators (src/quantize/validate.cpp, the all-reduce argument checks of
// src/collectives/all_reduce_select.cpp), built and run by scripts/fuzz.sh where clang supports -fsanitize=fuzzer
// (never in CI: the property tests tests/**/*_fuzz_test.cpp cover the same rules there). The input bytes become one
// call's parameters; the target aborts (a finding) when a call
//   * throws anything but tpcomm::Error(kInvalidArgument) whose message starts with "<argument>: ", or
//   * is accepted with a shape the kernels cannot run (a dimension >= 2^31, more than 2^40 elements), or
//   * trips AddressSanitizer / UndefinedBehaviorSanitizer (signed overflow in a size computation, say).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "collectives/all_reduce_args.h"
#include "quantize/validate.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/error.h"
#include "tpcomm/quantize.h"

using namespace tpcomm;
using namespace tpcomm::quant;

namespace {

struct Bytes {
  const uint8_t* p;
  size_t n;
  template <class T>
  T take() {
    T v{};
    const size_t k = n < sizeof(T) ? n : sizeof(T);
    std::memcpy(&v, p, k);
    p += k;
    n -= k;
    return v;
  }
  // Small values most of the time (the interesting ones), any 64-bit value sometimes.
  int64_t dim() {
    const uint8_t mode = take<uint8_t>();
    if (mode < 160) return static_cast<int64_t>(take<uint16_t>()) * (1 + (mode & 7));
    if (mode < 200) return static_cast<int64_t>(take<uint32_t>());
    return take<int64_t>();
  }
  const void* ptr() {
    const uint8_t mode = take<uint8_t>();
    if (mode < 16) return nullptr;
    const uintptr_t base = (static_cast<uintptr_t>(1 + mode % 6) << 44) + (static_cast<uintptr_t>(take<uint16_t>()) << 4);
    return reinterpret_cast<const void*>(mode < 220 ? base : base + take<uint8_t>());
  }
  void* wptr() { return const_cast<void*>(ptr()); }
};

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "validators_fuzz finding: %s\n", what.c_str());
  std::abort();
}

void accepted_shape(int64_t e, int64_t r, int64_t c) {
  constexpr int64_t kMaxDim = (int64_t(1) << 31) - 1;
  if (e > kMaxDim || r > kMaxDim || c > kMaxDim || r < 0 || c < 0 || e < 1)
    finding("accepted a dimension outside [0, 2^31)");
  if (static_cast<unsigned __int128>(e) * r * c > (static_cast<unsigned __int128>(1) << 40))
    finding("accepted more than 2^40 elements");
}

template <class F>
void run(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidArgument) finding(std::string("code ") + e.what());
    const std::string w = e.what(), prefix = "invalid_argument: ";
    const size_t colon = w.find(": ", prefix.size());
    if (w.rfind(prefix, 0) != 0 || colon == std::string::npos || colon == prefix.size())
      finding("message names no argument: " + w);
  } catch (const std::exception& e) {
    finding(std::string("non-tpcomm exception: ") + e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes b{data, size};
  const uint8_t op = b.take<uint8_t>() % 8;
  switch (op) {
    case 0: {
      Fp8QuantizeParams p;
      p.input_dtype = static_cast<DType>(b.take<uint8_t>() % 9);
      p.format = static_cast<Fp8Format>(b.take<uint8_t>() % 3);
      p.scaling = static_cast<Fp8Scaling>(b.take<uint8_t>() % 6);
      p.rows = b.dim();
      p.cols = b.dim();
      p.scale_ld = b.dim();
      p.input = b.ptr();
      p.output = b.wptr();
      p.scale_inv = static_cast<float*>(b.wptr());
      p.amax_in = static_cast<const float*>(b.ptr());
      p.amax_out = static_cast<float*>(b.wptr());
      p.transpose_output = b.take<uint8_t>() & 1;
      run([&] {
        quant::detail::validate(p);
        accepted_shape(1, p.rows, p.cols);
      });
      break;
    }
    case 1: {
      Fp8DequantizeParams p;
      p.output_dtype = static_cast<DType>(b.take<uint8_t>() % 9);
      p.format = static_cast<Fp8Format>(b.take<uint8_t>() % 3);
      p.scaling = static_cast<Fp8Scaling>(b.take<uint8_t>() % 6);
      p.rows = b.dim();
      p.cols = b.dim();
      p.scale_ld = b.dim();
      p.input = b.ptr();
      p.scale_inv = static_cast<const float*>(b.ptr());
      p.output = b.wptr();
      run([&] {
        quant::detail::validate(p);
        accepted_shape(1, p.rows, p.cols);
      });
      break;
    }
    case 2: {
      Mxfp8QuantizeParams p;
      p.input_dtype = static_cast<DType>(b.take<uint8_t>() % 9);
      p.format = static_cast<Fp8Format>(b.take<uint8_t>() % 3);
      p.rounding = static_cast<E8M0Rounding>(b.take<uint8_t>() % 3);
      p.scale_layout = static_cast<ScaleLayout>(b.take<uint8_t>() % 3);
      p.experts = b.dim();
      p.rows = b.dim();
      p.cols = b.dim();
      p.input = b.ptr();
      p.row_data = b.wptr();
      p.row_scales = static_cast<uint8_t*>(b.wptr());
      p.col_data = b.wptr();
      p.col_scales = static_cast<uint8_t*>(b.wptr());
      run([&] {
        quant::detail::validate(p);
        accepted_shape(p.experts, p.rows, p.cols);
      });
      break;
    }
    case 3: {
      Mxfp8DequantizeParams p;
      p.output_dtype = static_cast<DType>(b.take<uint8_t>() % 9);
      p.axis = static_cast<Mxfp8Axis>(b.take<uint8_t>() % 3);
      p.scale_layout = static_cast<ScaleLayout>(b.take<uint8_t>() % 3);
      p.experts = b.dim();
      p.rows = b.dim();
      p.cols = b.dim();
      p.data = b.ptr();
      p.scales = static_cast<const uint8_t*>(b.ptr());
      p.output = b.wptr();
      run([&] {
        quant::detail::validate(p);
        accepted_shape(p.experts, p.rows, p.cols);
      });
      break;
    }
    case 4: {
      Nvfp4QuantizeParams p;
      p.input_dtype = static_cast<DType>(b.take<uint8_t>() % 9);
      p.block = static_cast<Nvfp4Block>(b.take<uint8_t>() % 3);
      p.scale_layout = static_cast<ScaleLayout>(b.take<uint8_t>() % 3);
      p.rows = b.dim();
      p.cols = b.dim();
      p.input = b.ptr();
      p.output = b.wptr();
      p.block_scales = static_cast<uint8_t*>(b.wptr());
      p.global_amax_in = static_cast<const float*>(b.ptr());
      p.global_amax_out = static_cast<float*>(b.wptr());
      p.global_scale_inv = static_cast<float*>(b.wptr());
      run([&] {
        quant::detail::validate(p);
        accepted_shape(1, p.rows, p.cols);
      });
      break;
    }
    case 5: {
      Nvfp4DequantizeParams p;
      p.output_dtype = static_cast<DType>(b.take<uint8_t>() % 9);
      p.scale_layout = static_cast<ScaleLayout>(b.take<uint8_t>() % 3);
      p.rows = b.dim();
      p.cols = b.dim();
      p.input = b.ptr();
      p.block_scales = static_cast<const uint8_t*>(b.ptr());
      p.global_scale_inv = static_cast<const float*>(b.ptr());
      p.output = b.wptr();
      run([&] {
        quant::detail::validate(p);
        accepted_shape(1, p.rows, p.cols);
      });
      break;
    }
    case 6: {
      const DType dt = static_cast<DType>(b.take<uint8_t>() % 9);
      const int64_t n = b.dim();
      const void* in = b.ptr();
      float* out = static_cast<float*>(b.wptr());
      run([&] { quant::detail::validate_amax(in, dt, n, out); });
      break;
    }
    default: {
      AllReduceOptions o;
      o.algo = static_cast<AllReduceAlgo>(b.take<uint8_t>() % 6);
      o.zero_copy = b.take<uint8_t>() & 1;
      o.wire = static_cast<AllReduceWire>(b.take<uint8_t>() % 3);
      o.fp8_block = static_cast<int>(b.take<uint8_t>());
      o.gather_wire = static_cast<AllReduceWire>(b.take<uint8_t>() % 3);
      const DType dt = static_cast<DType>(b.take<uint8_t>() % 9);
      const ReduceOp rop = static_cast<ReduceOp>(b.take<uint8_t>() % 4);
      // Counts whose buffers stay inside the address space (see tests/collectives/all_reduce_args_fuzz_test.cpp).
      const uint64_t raw = b.take<uint64_t>();
      const size_t count = (raw >> 63) ? raw : (raw & ((uint64_t(1) << 40) - 1));
      const void* in = b.ptr();
      const void* out = (b.take<uint8_t>() & 1) ? in : b.ptr();
      run([&] { (void)tpcomm::detail::check_all_reduce_args(in, out, count, dt, rop, o); });
      break;
    }
  }
  return 0;
}
