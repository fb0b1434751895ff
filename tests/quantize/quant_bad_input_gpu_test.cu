// Bad input on the GPU: every public quantize entry point, and all_reduce on a one-rank communicator, called with
// null, misaligned, too-large, mismatched, out-of-range and overlapping arguments. Each call must throw
// tpcomm::Error(kInvalidArgument) whose message starts with the argument's name, and leave every byte of every
// buffer as it was: outputs carry a poison pattern, inputs fresh random data, and all are compared byte for byte
// with a snapshot after each call (a kernel launched before the throw would show). Every group starts with the
// valid call its bad variants derive from, which must run and write its outputs, so no variant is rejected for a
// reason other than the one it tests.
#include <gtest/gtest.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/communicator.h"
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

// Device buffers of one test with their reference contents: inputs random, outputs poisoned (0xcd).
class Arena {
 public:
  ~Arena() {
    for (auto& b : bufs_) cudaFree(b.p);
  }
  // n bytes; kind 0: poison, 1: random bf16 (finite, |x| < 2^10), 2: random bytes, 3: random positive fp32 scales.
  uint8_t* add(size_t n, int kind) {
    Buf b;
    CK(cudaMalloc(&b.p, n));
    b.want.resize(n);
    test::SplitMix64 rng(seed_ + bufs_.size() * 0x9E3779B97F4A7C15ull);
    if (kind == 0) {
      std::memset(b.want.data(), 0xcd, n);
    } else if (kind == 1) {
      for (size_t i = 0; i + 1 < n; i += 2) {
        const uint16_t v = ref::float_to_bf16(static_cast<float>(rng.uniform(-1000.0, 1000.0)));
        std::memcpy(&b.want[i], &v, 2);
      }
    } else if (kind == 2) {
      for (auto& x : b.want) x = static_cast<uint8_t>(rng.next());
    } else {
      for (size_t i = 0; i + 3 < n; i += 4) {
        const float v = static_cast<float>(rng.uniform(0.001, 4.0));
        std::memcpy(&b.want[i], &v, 4);
      }
    }
    CK(static_cast<cudaError_t>(test::copy_to_device(b.p, b.want.data(), n)));
    bufs_.push_back(std::move(b));
    return static_cast<uint8_t*>(bufs_.back().p);
  }
  // Writes the reference contents back (after a valid call wrote the outputs).
  void restore() {
    for (auto& b : bufs_) CK(static_cast<cudaError_t>(test::copy_to_device(b.p, b.want.data(), b.want.size())));
  }
  // Number of buffers whose contents differ from the reference.
  int changed() {
    CK(cudaDeviceSynchronize());
    int n = 0;
    for (auto& b : bufs_) {
      std::vector<uint8_t> h(b.want.size());
      CK(cudaMemcpy(h.data(), b.p, h.size(), cudaMemcpyDeviceToHost));
      n += h != b.want;
    }
    return n;
  }
  uint64_t seed() const { return seed_; }

 private:
  struct Buf {
    void* p = nullptr;
    std::vector<uint8_t> want;
  };
  uint64_t seed_ = test::fresh_seed();
  std::vector<Buf> bufs_;
};

template <class T>
T* off(T* p, std::ptrdiff_t bytes) {
  return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) + bytes);
}

// The valid call: runs, and writes at least one buffer; then the buffers are restored.
template <class F>
void expect_valid(Arena& a, F&& f, const std::string& what) {
  try {
    f();
  } catch (const std::exception& e) {
    FAIL() << what << ": the valid call threw " << e.what();
  }
  EXPECT_GT(a.changed(), 0) << what << ": the valid call wrote nothing";
  a.restore();
  ASSERT_EQ(a.changed(), 0);
}

int g_calls = 0;  // bad calls made by this binary (reported by the last test)

// A bad call: tpcomm::Error(kInvalidArgument) naming `name`, nothing written anywhere.
template <class F>
void expect_rejected(Arena& a, const std::string& name, F&& f, const std::string& what) {
  ++g_calls;
  const std::string prefix = std::string(error_code_name(ErrorCode::kInvalidArgument)) + ": " + name + ": ";
  try {
    f();
    ADD_FAILURE() << what << ": accepted; expected an error naming '" << name << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << what << ": " << e.what();
    EXPECT_EQ(std::string(e.what()).rfind(prefix, 0), 0u)
        << what << ": expected a message starting with '" << prefix << "', got '" << e.what() << "'";
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-tpcomm exception: " << e.what();
  }
  const int n = a.changed();
  EXPECT_EQ(n, 0) << what << ": " << n << " buffer(s) changed by a rejected call (seed " << a.seed() << ")";
  if (n) a.restore();
}

constexpr int64_t R = 64, C = 256;  // multiples of 16, 32 and 128 (cols): every op takes this shape
constexpr int64_t kHuge = int64_t(1) << 31;

// ---- FP8 ------------------------------------------------------------------------------------------------------------
TEST(QuantBadInput, Fp8Quantize) {
  Arena a;
  auto* in = a.add(R * C * 2, 1);
  auto* out = a.add(R * C, 0);
  auto* sc = reinterpret_cast<float*>(a.add(4096 * 4, 0));
  auto* amax = reinterpret_cast<float*>(a.add(C * 4, 0));
  auto* amax_in = reinterpret_cast<float*>(a.add(16, 3));
  for (Fp8Scaling s : {Fp8Scaling::kTensorwise, Fp8Scaling::kRowwise, Fp8Scaling::kColwise, Fp8Scaling::kBlock1x128,
                       Fp8Scaling::kBlock128x128}) {
    const std::string tag = std::string("fp8 ") + fp8_scaling_name(s);
    Fp8QuantizeParams base;
    base.input = in;
    base.rows = R;
    base.cols = C;
    base.scaling = s;
    base.output = out;
    base.scale_inv = sc;
    if (s == Fp8Scaling::kTensorwise || s == Fp8Scaling::kColwise) base.amax_out = amax;
    expect_valid(a, [&] { fp8_quantize(base, nullptr); }, tag);
    auto bad = [&](const std::string& name, const std::function<void(Fp8QuantizeParams&)>& mutate,
                   const std::string& what) {
      Fp8QuantizeParams p = base;
      mutate(p);
      expect_rejected(a, name, [&] { fp8_quantize(p, nullptr); }, tag + ": " + what);
    };
    bad("input", [](auto& p) { p.input = nullptr; }, "null input");
    bad("input", [&](auto& p) { p.input = in + 8; }, "input 8 bytes off");
    bad("output", [](auto& p) { p.output = nullptr; }, "null output");
    bad("output", [&](auto& p) { p.output = out + 4; }, "output 4 bytes off");
    bad("scale_inv", [](auto& p) { p.scale_inv = nullptr; }, "null scale_inv");
    bad("scale_inv", [&](auto& p) { p.scale_inv = sc + 1; }, "scale_inv 4 bytes off");
    bad("cols", [](auto& p) { p.cols = C - 4; }, "cols not a multiple of 8");
    bad("rows", [](auto& p) { p.rows = -1; }, "negative rows");
    bad("rows", [](auto& p) { p.rows = kHuge; }, "rows 2^31");
    bad("cols", [](auto& p) { p.cols = kHuge + 8; }, "cols 2^31 + 8");
    bad("rows", [](auto& p) { p.rows = int64_t(1) << 21, p.cols = int64_t(1) << 20; }, "2^41 elements");
    bad("input_dtype", [](auto& p) { p.input_dtype = DType::kFloat32; }, "f32 input");
    bad("format", [](auto& p) { p.format = static_cast<Fp8Format>(7); }, "format 7");
    bad("scaling", [](auto& p) { p.scaling = static_cast<Fp8Scaling>(9); }, "scaling 9");
    bad("output", [&](auto& p) { p.output = in; }, "output aliasing the input");
    bad("scale_inv", [&](auto& p) { p.scale_inv = reinterpret_cast<float*>(out + 64); }, "scale_inv inside output");
    if (s == Fp8Scaling::kTensorwise) {
      bad("amax_out", [](auto& p) { p.amax_out = nullptr; }, "neither amax_in nor amax_out");
      bad("amax_out", [&](auto& p) { p.amax_out = off(amax, 2); }, "amax_out 2 bytes off");
      bad("amax_in", [&](auto& p) { p.amax_in = off(amax_in, 1); }, "amax_in 1 byte off");
      bad("scale_inv", [&](auto& p) { p.amax_in = amax_in, p.scale_inv = amax_in; }, "scale_inv aliasing amax_in");
    } else {
      bad("amax_in", [&](auto& p) { p.amax_in = amax_in; }, "amax_in with per-row/column/block scales");
    }
    if (s == Fp8Scaling::kColwise) {
      bad("amax_out", [](auto& p) { p.amax_out = nullptr; }, "null amax_out");
      bad("amax_out", [&](auto& p) { p.amax_out = amax + 1; }, "amax_out 4 bytes off");
      bad("amax_out", [&](auto& p) { p.amax_out = sc; }, "amax_out aliasing scale_inv");
      bad("rows", [](auto& p) { p.transpose_output = true, p.rows = 40; }, "transposed output, rows not a multiple of 16");
    } else {
      bad("transpose_output", [](auto& p) { p.transpose_output = true; }, "transposed output without colwise");
    }
    if (s == Fp8Scaling::kBlock1x128) bad("scale_ld", [](auto& p) { p.scale_ld = R - 1; }, "scale_ld < rows");
    if (s == Fp8Scaling::kBlock128x128) bad("scale_ld", [](auto& p) { p.scale_ld = 1; }, "scale_ld < ceil(cols/128)");
    bad("scale_ld", [](auto& p) { p.scale_ld = -1; }, "negative scale_ld");
  }
}

TEST(QuantBadInput, Fp8Dequantize) {
  Arena a;
  auto* q = a.add(R * C, 2);
  auto* sc = reinterpret_cast<float*>(a.add(4096 * 4, 3));
  auto* out = a.add(R * C * 4, 0);
  Fp8DequantizeParams base;
  base.input = q;
  base.rows = R;
  base.cols = C;
  base.scaling = Fp8Scaling::kRowwise;
  base.scale_inv = sc;
  base.output = out;
  expect_valid(a, [&] { fp8_dequantize(base, nullptr); }, "fp8 dequant");
  auto bad = [&](const std::string& name, const std::function<void(Fp8DequantizeParams&)>& mutate,
                 const std::string& what) {
    Fp8DequantizeParams p = base;
    mutate(p);
    expect_rejected(a, name, [&] { fp8_dequantize(p, nullptr); }, "fp8 dequant: " + what);
  };
  bad("input", [](auto& p) { p.input = nullptr; }, "null input");
  bad("input", [&](auto& p) { p.input = q + 1; }, "input 1 byte off");
  bad("scale_inv", [](auto& p) { p.scale_inv = nullptr; }, "null scale_inv");
  bad("output", [&](auto& p) { p.output = out + 2; }, "output 2 bytes off");
  bad("output_dtype", [](auto& p) { p.output_dtype = DType::kFloat16; }, "f16 output");
  bad("cols", [](auto& p) { p.cols = 12; }, "cols 12");
  bad("rows", [](auto& p) { p.rows = int64_t(1) << 30, p.cols = int64_t(1) << 12; }, "2^42 elements");
  bad("output", [&](auto& p) { p.output = q; }, "output aliasing the input");
  bad("output", [&](auto& p) { p.output = sc; }, "output aliasing scale_inv");
  bad("scale_ld", [](auto& p) { p.scaling = Fp8Scaling::kBlock1x128, p.scale_ld = 3; }, "1x128 scale_ld < rows");
}

TEST(QuantBadInput, ComputeAmax) {
  Arena a;
  auto* in = a.add(R * C * 2, 1);
  auto* amax = reinterpret_cast<float*>(a.add(16, 0));
  expect_valid(a, [&] { compute_amax(in, DType::kBFloat16, R * C, amax, nullptr); }, "compute_amax");
  auto bad = [&](const std::string& name, const void* i, DType dt, int64_t n, float* o, const std::string& what) {
    expect_rejected(a, name, [&] { compute_amax(i, dt, n, o, nullptr); }, "compute_amax: " + what);
  };
  bad("count", in, DType::kBFloat16, 12, amax, "count 12");
  bad("count", in, DType::kBFloat16, -8, amax, "count -8");
  bad("count", in, DType::kBFloat16, int64_t(1) << 41, amax, "count 2^41");
  bad("amax_out", in, DType::kBFloat16, R * C, nullptr, "null amax_out");
  bad("amax_out", in, DType::kBFloat16, R * C, off(amax, 1), "amax_out 1 byte off");
  bad("input", nullptr, DType::kBFloat16, R * C, amax, "null input");
  bad("input", in + 2, DType::kBFloat16, R * C, amax, "input 2 bytes off");
  bad("input_dtype", in, DType::kFloat16, R * C, amax, "f16 input");
  bad("amax_out", in, DType::kBFloat16, R * C, reinterpret_cast<float*>(in + 1024), "amax_out inside the input");
}

// ---- MXFP8 ----------------------------------------------------------------------------------------------------------
TEST(QuantBadInput, Mxfp8Quantize) {
  Arena a;
  auto* in = a.add(R * C * 2, 1);
  auto* rd = a.add(R * C, 0);
  auto* rs = a.add(8192, 0);
  auto* cd = a.add(R * C, 0);
  auto* cs = a.add(8192, 0);
  for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
    const std::string tag = std::string("mxfp8 ") + scale_layout_name(lay);
    Mxfp8QuantizeParams base;
    base.input = in;
    base.rows = R;
    base.cols = C;
    base.scale_layout = lay;
    base.row_data = rd;
    base.row_scales = rs;
    base.col_data = cd;
    base.col_scales = cs;
    expect_valid(a, [&] { mxfp8_quantize(base, nullptr); }, tag);
    auto bad = [&](const std::string& name, const std::function<void(Mxfp8QuantizeParams&)>& mutate,
                   const std::string& what) {
      Mxfp8QuantizeParams p = base;
      mutate(p);
      expect_rejected(a, name, [&] { mxfp8_quantize(p, nullptr); }, tag + ": " + what);
    };
    bad("input", [](auto& p) { p.input = nullptr; }, "null input");
    bad("input", [&](auto& p) { p.input = in + 4; }, "input 4 bytes off");
    bad("row_scales", [](auto& p) { p.row_scales = nullptr; }, "row_data without row_scales");
    bad("col_data", [](auto& p) { p.col_data = nullptr; }, "col_scales without col_data");
    bad("row_data", [](auto& p) { p.row_data = nullptr, p.row_scales = nullptr, p.col_data = nullptr, p.col_scales = nullptr; },
        "no output");
    bad("row_data", [&](auto& p) { p.row_data = rd + 8; }, "row_data 8 bytes off");
    bad("col_scales", [&](auto& p) { p.col_scales = cs + 1; }, "col_scales 1 byte off");
    bad("cols", [](auto& p) { p.cols = 48; }, "rowwise cols 48");
    bad("rows", [](auto& p) { p.rows = 48; }, "colwise rows 48");
    bad("experts", [](auto& p) { p.experts = 0; }, "0 experts");
    bad("experts", [](auto& p) { p.experts = kHuge; }, "2^31 experts");
    bad("experts", [](auto& p) { p.experts = int64_t(1) << 20, p.rows = 2048, p.cols = 2048; }, "2^42 elements");
    bad("rows", [](auto& p) { p.rows = kHuge + 32; }, "rows past 2^31");
    bad("rounding", [](auto& p) { p.rounding = static_cast<E8M0Rounding>(5); }, "rounding 5");
    bad("scale_layout", [](auto& p) { p.scale_layout = static_cast<ScaleLayout>(3); }, "layout 3");
    bad("format", [](auto& p) { p.format = static_cast<Fp8Format>(-1); }, "format -1");
    bad("col_data", [&](auto& p) { p.col_data = rd; }, "col_data aliasing row_data");
    bad("row_scales", [&](auto& p) { p.row_scales = in + 512; }, "row_scales inside the input");
  }
}

TEST(QuantBadInput, Mxfp8Dequantize) {
  Arena a;
  auto* q = a.add(R * C, 2);
  auto* s = a.add(8192, 2);
  auto* out = a.add(R * C * 4, 0);
  Mxfp8DequantizeParams base;
  base.data = q;
  base.scales = s;
  base.rows = R;
  base.cols = C;
  base.output = out;
  expect_valid(a, [&] { mxfp8_dequantize(base, nullptr); }, "mxfp8 dequant");
  auto bad = [&](const std::string& name, const std::function<void(Mxfp8DequantizeParams&)>& mutate,
                 const std::string& what) {
    Mxfp8DequantizeParams p = base;
    mutate(p);
    expect_rejected(a, name, [&] { mxfp8_dequantize(p, nullptr); }, "mxfp8 dequant: " + what);
  };
  bad("data", [](auto& p) { p.data = nullptr; }, "null data");
  bad("scales", [&](auto& p) { p.scales = s + 1; }, "scales 1 byte off");
  bad("output", [](auto& p) { p.output = nullptr; }, "null output");
  bad("axis", [](auto& p) { p.axis = static_cast<Mxfp8Axis>(5); }, "axis 5");
  bad("cols", [](auto& p) { p.cols = 48; }, "rowwise cols 48");
  bad("rows", [](auto& p) { p.axis = Mxfp8Axis::kColwise, p.rows = 48; }, "colwise rows 48");
  bad("output_dtype", [](auto& p) { p.output_dtype = DType::kInt32; }, "int32 output");
  bad("output", [&](auto& p) { p.output = q + 256; }, "output inside data");
  bad("experts", [](auto& p) { p.experts = -3; }, "negative experts");
}

// ---- NVFP4 ----------------------------------------------------------------------------------------------------------
TEST(QuantBadInput, Nvfp4Quantize) {
  Arena a;
  auto* in = a.add(R * C * 2, 1);
  auto* out = a.add(R * C / 2, 0);
  auto* sc = a.add(8192, 0);
  auto* amax = reinterpret_cast<float*>(a.add(16, 0));
  auto* gsi = reinterpret_cast<float*>(a.add(16, 0));
  auto* amax_in = reinterpret_cast<float*>(a.add(16, 3));
  for (Nvfp4Block blk : {Nvfp4Block::k1x16, Nvfp4Block::k16x16}) {
    const std::string tag = blk == Nvfp4Block::k1x16 ? "nvfp4 1x16" : "nvfp4 16x16";
    Nvfp4QuantizeParams base;
    base.input = in;
    base.rows = R;
    base.cols = C;
    base.block = blk;
    base.output = out;
    base.block_scales = sc;
    base.global_amax_out = amax;
    base.global_scale_inv = gsi;
    expect_valid(a, [&] { nvfp4_quantize(base, nullptr); }, tag);
    auto bad = [&](const std::string& name, const std::function<void(Nvfp4QuantizeParams&)>& mutate,
                   const std::string& what) {
      Nvfp4QuantizeParams p = base;
      mutate(p);
      expect_rejected(a, name, [&] { nvfp4_quantize(p, nullptr); }, tag + ": " + what);
    };
    bad("input", [](auto& p) { p.input = nullptr; }, "null input");
    bad("output", [&](auto& p) { p.output = out + 8; }, "output 8 bytes off");
    bad("block_scales", [](auto& p) { p.block_scales = nullptr; }, "null block_scales");
    bad("global_amax_out", [](auto& p) { p.global_amax_out = nullptr; }, "neither global amax in nor out");
    bad("global_amax_out", [&](auto& p) { p.global_amax_out = off(amax, 2); }, "global_amax_out 2 bytes off");
    bad("global_amax_in", [&](auto& p) { p.global_amax_in = off(amax_in, 1); }, "global_amax_in 1 byte off");
    bad("global_scale_inv", [&](auto& p) { p.global_scale_inv = off(gsi, 1); }, "global_scale_inv 1 byte off");
    bad("cols", [](auto& p) { p.cols = 24; }, "cols 24");
    bad("rows", [](auto& p) { p.rows = int64_t(1) << 25, p.cols = int64_t(1) << 16; }, "2^41 elements");
    bad("block", [](auto& p) { p.block = static_cast<Nvfp4Block>(7); }, "block 7");
    bad("scale_layout", [](auto& p) { p.scale_layout = static_cast<ScaleLayout>(2); }, "layout 2");
    bad("input_dtype", [](auto& p) { p.input_dtype = DType::kFloat8E4M3; }, "fp8 input");
    bad("block_scales", [&](auto& p) { p.block_scales = out; }, "block_scales aliasing output");
    bad("global_scale_inv", [&](auto& p) { p.global_scale_inv = amax; }, "global_scale_inv aliasing global_amax_out");
    bad("output", [&](auto& p) { p.output = in + 1024; }, "output inside the input");
    if (blk == Nvfp4Block::k16x16) bad("rows", [](auto& p) { p.rows = 40; }, "rows 40");
  }
}

TEST(QuantBadInput, Nvfp4Dequantize) {
  Arena a;
  auto* q = a.add(R * C / 2, 2);
  auto* sc = a.add(8192, 2);
  auto* gsi = reinterpret_cast<float*>(a.add(16, 3));
  auto* out = a.add(R * C * 4, 0);
  Nvfp4DequantizeParams base;
  base.input = q;
  base.block_scales = sc;
  base.global_scale_inv = gsi;
  base.rows = R;
  base.cols = C;
  base.output = out;
  expect_valid(a, [&] { nvfp4_dequantize(base, nullptr); }, "nvfp4 dequant");
  auto bad = [&](const std::string& name, const std::function<void(Nvfp4DequantizeParams&)>& mutate,
                 const std::string& what) {
    Nvfp4DequantizeParams p = base;
    mutate(p);
    expect_rejected(a, name, [&] { nvfp4_dequantize(p, nullptr); }, "nvfp4 dequant: " + what);
  };
  bad("input", [](auto& p) { p.input = nullptr; }, "null input");
  bad("block_scales", [&](auto& p) { p.block_scales = sc + 3; }, "block_scales 3 bytes off");
  bad("global_scale_inv", [](auto& p) { p.global_scale_inv = nullptr; }, "null global_scale_inv");
  bad("global_scale_inv", [&](auto& p) { p.global_scale_inv = off(gsi, 2); }, "global_scale_inv 2 bytes off");
  bad("output", [](auto& p) { p.output = nullptr; }, "null output");
  bad("output_dtype", [](auto& p) { p.output_dtype = DType::kUInt8; }, "uint8 output");
  bad("cols", [](auto& p) { p.cols = 24; }, "cols 24");
  bad("rows", [](auto& p) { p.rows = -16; }, "negative rows");
  bad("output", [&](auto& p) { p.output = q; }, "output aliasing the input");
}

// ---- all_reduce on a one-rank communicator ---------------------------------------------------------------------------
TEST(AllReduceBadInput, OneRankCommunicator) {
  CK(cudaSetDevice(0));
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  auto comm = Communicator::create(0, 1, 0, id);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const size_t n = 4096;
  Arena a;
  auto* in = a.add(n * 4, 1);  // bf16 in the first half; room for f32 and offsets
  auto* out = a.add(n * 4, 0);
  // The valid call: one rank, so the sum is the input, bit for bit.
  expect_valid(a, [&] {
    all_reduce(*comm, in, out, n, DType::kBFloat16, ReduceOp::kSum, st);
    comm->synchronize(st);
    std::vector<uint8_t> hi(n * 2), ho(n * 2);
    CK(cudaMemcpy(hi.data(), in, n * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(ho.data(), out, n * 2, cudaMemcpyDeviceToHost));
    EXPECT_EQ(hi, ho) << "one-rank all-reduce is not the input";
  }, "all_reduce");
  const DType bf = DType::kBFloat16;
  const ReduceOp sum = ReduceOp::kSum;
  auto bad = [&](const std::string& name, const void* i, void* o, size_t cnt, DType dt, ReduceOp op,
                 AllReduceOptions opt, const std::string& what) {
    expect_rejected(a, name, [&] {
      all_reduce(*comm, i, o, cnt, dt, op, st, opt);
      comm->synchronize(st);
    }, "all_reduce: " + what);
  };
  bad("input", nullptr, out, n, bf, sum, {}, "null input");
  bad("output", in, nullptr, n, bf, sum, {}, "null output");
  bad("input", in + 1, out, n, bf, sum, {}, "input 1 byte off");
  bad("output", in, out + 2, n, DType::kFloat32, sum, {}, "f32 output 2 bytes off");
  bad("output", in, in + 4, n, bf, sum, {}, "output partially overlapping the input");
  bad("dtype", in, out, n, DType::kFloat8E4M3, sum, {}, "fp8 dtype");
  bad("op", in, out, n, bf, static_cast<ReduceOp>(7), {}, "op 7");
  bad("count", in, out, SIZE_MAX / 2 + 1, bf, sum, {}, "count overflowing a byte count");
  AllReduceOptions zc;
  zc.zero_copy = true;
  bad("zero_copy", in, out, n, bf, sum, zc, "zero copy with auto");
  AllReduceOptions wire;
  wire.wire = AllReduceWire::kFp8;
  wire.algo = AllReduceAlgo::kOneShot;
  bad("wire", in, out, n, bf, sum, wire, "FP8 wire on one_shot");
  wire.algo = AllReduceAlgo::kAuto;
  wire.fp8_block = 64;
  bad("fp8_block", in, out, n, bf, sum, wire, "fp8_block 64");
  if (comm->fast_path()) {
    // Pinned algorithms beyond their workspace: too large, named as count (pointers are never read).
    const CommOptions& o = comm->options();
    const std::pair<AllReduceAlgo, size_t> caps[] = {{AllReduceAlgo::kOneShot, o.one_shot_max_bytes},
                                                     {AllReduceAlgo::kTwoShot, o.two_shot_max_bytes},
                                                     {AllReduceAlgo::kOneShotLL, o.lamport_max_bytes}};
    for (const auto& [algo, cap] : caps) {
      if (cap == 0) continue;
      AllReduceOptions pin;
      pin.algo = algo;
      bad("count", in, out, cap / 2 + 1, bf, sum, pin,
          std::string("pinned ") + all_reduce_algo_name(algo) + " beyond its workspace");
    }
    AllReduceOptions zc1;
    zc1.algo = AllReduceAlgo::kOneShot;
    zc1.zero_copy = true;
    bad("input", in, out, n, bf, sum, zc1, "zero copy of an unregistered input");
    bad("output", in, in, n, bf, sum, zc1, "zero copy in place");
  } else {
    std::printf("one-rank communicator without the fast path (%s): pinned-algorithm cases not run\n",
                comm->topology().reason.c_str());
  }
  CK(cudaStreamDestroy(st));
  comm->destroy();
  std::printf("[ bad input] %d rejected calls checked in this binary so far\n", g_calls);
}

}  // namespace
