// Property test of the quantization validators (src/quantize/validate.cpp), CPU only: thousands of random
// parameter sets per entry point (shapes at and past every limit, bad enum values, null, misaligned and overlapping
// pointers, pointers near the top of the address space), each checked against a model of the rules written here
// from tpcomm/quantize.h (not from validate.cpp):
//   * a call the model finds no fault in is accepted; one with a fault is rejected;
//   * a rejection is tpcomm::Error(kInvalidArgument) whose message starts with an argument the model finds at fault;
//   * nothing else is ever thrown, nothing crashes (pointers are never dereferenced: validation runs on the host).
// Among the rules are the limits the kernels need (each dimension < 2^31, <= 2^40 elements, < 2^31 MXFP8 tiles),
// so an accepted call is one the kernels can run. The validators touch no CUDA state; the detail::validate
// functions are called directly because the public entry points would launch kernels after an accepted call.
// A failure prints the seed and the case index (TPCOMM_FUZZ_SEED replays the run; tests/common/fuzz_util.h).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "common/fuzz_util.h"
#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "quantize/validate.h"
#include "tpcomm/error.h"
#include "tpcomm/quantize.h"

using namespace tpcomm;
using namespace tpcomm::quant;

namespace {

using Faults = std::set<std::string>;
using i128 = __int128;

constexpr int64_t kMaxDim = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxElements = int64_t(1) << 40;
constexpr int64_t kDefaultCases = 20000;

// ---- random values ------------------------------------------------------------------------------------------------
struct Gen {
  test::SplitMix64 rng;
  explicit Gen(uint64_t seed) : rng(seed) {}
  uint64_t u(uint64_t n) { return rng.next() % n; }
  bool pct(int p) { return u(100) < static_cast<uint64_t>(p); }

  // A dimension: mostly small multiples of `mult`, sometimes any small value, zero, values at 2^31 and the 2^40
  // element limit (with `other`, the dimension it multiplies), huge, negative.
  int64_t dim(int64_t mult, int64_t other = 1) {
    const uint64_t r = u(100);
    if (r < 55) return mult * static_cast<int64_t>(u(40));
    if (r < 68) return static_cast<int64_t>(u(300));
    if (r < 73) return 0;
    if (r < 80) {  // at the per-dimension limit
      const int64_t m = std::max<int64_t>(mult, 1);
      const int64_t below = kMaxDim / m * m - m * static_cast<int64_t>(u(3));
      return pct(50) ? below : kMaxDim + 1 + static_cast<int64_t>(u(64));
    }
    if (r < 88 && other > 0) {  // at the element limit: kMaxElements / other, rounded to mult, +- a step
      const int64_t m = std::max<int64_t>(mult, 1);
      const int64_t at = kMaxElements / other / m * m;
      return at + m * (static_cast<int64_t>(u(3)) - 1);
    }
    if (r < 93) return static_cast<int64_t>(rng.next() >> (1 + u(40)));
    if (r < 98) return -1 - static_cast<int64_t>(u(1000));
    return pct(50) ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
  }

  // An enum with valid values [0, nvalid): mostly valid, else an out-of-range value.
  template <class E>
  E enum_of(int nvalid) {
    if (pct(95)) return static_cast<E>(u(static_cast<uint64_t>(nvalid)));
    static const int bad[] = {-1, 7, 99, std::numeric_limits<int>::min()};
    return static_cast<E>(pct(50) ? nvalid : bad[u(4)]);
  }

  DType dtype(DType usual, int p_usual) {
    if (pct(p_usual)) return usual;
    if (pct(85)) return static_cast<DType>(u(7));  // every DType
    return static_cast<DType>(pct(50) ? 7 : -3);
  }
};

// Byte size of a buffer for the generator: the real size when the dimensions are sane, else a stand-in (the model
// computes the true extents itself).
int64_t nominal(i128 bytes) {
  if (bytes <= 0 || bytes > (i128(1) << 50)) return 4096;
  return static_cast<int64_t>(bytes);
}

// The pointers of one case. Each buffer gets its own 2^44-byte region (above any extent the limits allow), so
// buffers overlap only where the generator points one into another.
struct Ptrs {
  struct Made {
    uintptr_t p;
    int64_t bytes;
  };
  std::vector<Made> made;

  uintptr_t make(Gen& g, int64_t bytes) {
    const uintptr_t region = static_cast<uintptr_t>(made.size() + 1) << 44;
    const uintptr_t aligned = region + 16 * static_cast<uintptr_t>(g.u(1 << 16));
    const uint64_t r = g.u(100);
    uintptr_t p = aligned;
    if (r < 5) {
      p = 0;
    } else if (r < 11) {
      p = aligned + 1 + static_cast<uintptr_t>(g.u(15));  // 1..15 bytes off: 4-aligned sometimes, never 16
    } else if (r < 17) {
      std::vector<Made> live;
      for (const Made& m : made)
        if (m.p != 0) live.push_back(m);
      if (!live.empty()) {  // into (or just before or after) an earlier buffer, 16-byte aligned
        const Made& q = live[g.u(live.size())];
        const i128 lo = -static_cast<i128>(bytes) - 32, hi = static_cast<i128>(q.bytes) + 32;
        const i128 off = lo + static_cast<i128>(g.rng.next() % static_cast<uint64_t>(hi - lo));
        const i128 target = static_cast<i128>(q.p) + off;
        p = target > 16 ? static_cast<uintptr_t>(target) & ~uintptr_t(15) : aligned;
      }
    } else if (r < 19) {
      p = static_cast<uintptr_t>(g.rng.next()) & ~uintptr_t(15);  // anywhere, up to the top of the address space
    }
    made.push_back({p, bytes});
    return p;
  }
  template <class T>
  T* ptr(Gen& g, int64_t bytes) {
    return reinterpret_cast<T*>(make(g, bytes));
  }
};

// ---- the model's rules --------------------------------------------------------------------------------------------
bool misaligned(const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) % a) != 0; }

// A data or scale pointer: non-null, 16-byte aligned.
void need_ptr16(Faults& f, const void* p, const char* name) {
  if (p == nullptr || misaligned(p, 16)) f.insert(name);
}
// A device scalar given (optionally): 4-byte aligned.
void need_aligned4(Faults& f, const void* p, const char* name) {
  if (p != nullptr && misaligned(p, 4)) f.insert(name);
}

bool valid_fmt(Fp8Format x) { return x == Fp8Format::kE4M3 || x == Fp8Format::kE5M2; }
bool valid_layout(ScaleLayout x) { return x == ScaleLayout::kLinear || x == ScaleLayout::kSwizzled128x4; }
bool valid_out_dtype(DType d) { return d == DType::kBFloat16 || d == DType::kFloat32; }
bool valid_scaling(Fp8Scaling s) { return static_cast<int>(s) >= 0 && static_cast<int>(s) <= 4; }
int64_t out_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Dimensions in [0, 2^31) (else the dimension is at fault); returns whether all were.
bool dims_in_range(Faults& f, int64_t rows, int64_t cols) {
  bool ok = true;
  if (rows < 0 || rows > kMaxDim) f.insert("rows"), ok = false;
  if (cols < 0 || cols > kMaxDim) f.insert("cols"), ok = false;
  return ok;
}
// More than 2^40 elements: any of the dimensions is at fault (has_experts: the op has an experts argument).
void elements_limit(Faults& f, int64_t experts, int64_t rows, int64_t cols, bool has_experts) {
  if (static_cast<i128>(experts) * rows * cols > kMaxElements) {
    if (has_experts) f.insert("experts");
    f.insert("rows");
    f.insert("cols");
  }
}

// Overlaps among the buffers of one call: a pair shares bytes and at least one of them is written -> both named.
struct Extent {
  const void* p;
  i128 bytes;
  const char* name;
  bool written;
};
void overlaps(Faults& f, const std::vector<Extent>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    for (size_t j = i + 1; j < v.size(); ++j) {
      const Extent &a = v[i], &b = v[j];
      if ((!a.written && !b.written) || a.p == nullptr || b.p == nullptr || a.bytes <= 0 || b.bytes <= 0) continue;
      const i128 pa = static_cast<i128>(reinterpret_cast<uintptr_t>(a.p));
      const i128 pb = static_cast<i128>(reinterpret_cast<uintptr_t>(b.p));
      if (pa < pb + b.bytes && pb < pa + a.bytes) {
        f.insert(a.name);
        f.insert(b.name);
      }
    }
}

// FP8 scale entries from the layouts of tpcomm/quantize.h: 1x128 scale_inv[j*ld + i] (j < ceil(cols/128), i <
// rows, ld default rows); 128x128 scale_inv[i*ld + j] (i < ceil(rows/128), j < ceil(cols/128), ld default the
// latter).
i128 fp8_scale_entries(int64_t rows, int64_t cols, Fp8Scaling s, int64_t ld) {
  switch (s) {
    case Fp8Scaling::kTensorwise: return 1;
    case Fp8Scaling::kRowwise: return rows;
    case Fp8Scaling::kColwise: return cols;
    case Fp8Scaling::kBlock1x128: {
      const int64_t nb = cdiv(cols, 128);
      return nb == 0 ? 0 : static_cast<i128>(nb - 1) * (ld ? ld : rows) + rows;
    }
    case Fp8Scaling::kBlock128x128: {
      const int64_t nb = cdiv(cols, 128), mb = cdiv(rows, 128);
      return mb == 0 ? 0 : static_cast<i128>(mb - 1) * (ld ? ld : nb) + nb;
    }
  }
  return 0;
}

void fp8_ld_rules(Faults& f, int64_t rows, int64_t cols, Fp8Scaling s, int64_t ld) {
  if (ld < 0 || ld > kMaxDim) {
    f.insert("scale_ld");
    return;
  }
  if (ld != 0 && s == Fp8Scaling::kBlock1x128 && ld < rows) f.insert("scale_ld");
  if (ld != 0 && s == Fp8Scaling::kBlock128x128 && ld < cdiv(cols, 128)) f.insert("scale_ld");
}

Faults model(const Fp8QuantizeParams& p) {
  Faults f;
  if (p.input_dtype != DType::kBFloat16) f.insert("input_dtype");
  if (!valid_fmt(p.format)) f.insert("format");
  const bool sc_ok = valid_scaling(p.scaling);
  if (!sc_ok) f.insert("scaling");
  // Shape rules hold independently of each other; the pointer rules apply to a sane, non-empty shape only.
  if (!dims_in_range(f, p.rows, p.cols)) return f;
  bool ok = true;
  if (p.cols % 8 != 0) f.insert("cols"), ok = false;
  elements_limit(f, 1, p.rows, p.cols, false);
  fp8_ld_rules(f, p.rows, p.cols, p.scaling, p.scale_ld);
  if (!ok || p.rows == 0 || p.cols == 0) return f;  // empty: nothing is read or written, pointers not looked at
  need_ptr16(f, p.input, "input");
  need_ptr16(f, p.output, "output");
  need_ptr16(f, p.scale_inv, "scale_inv");
  const bool tensor = p.scaling == Fp8Scaling::kTensorwise, colwise = p.scaling == Fp8Scaling::kColwise;
  if (tensor) {
    if (p.amax_in == nullptr && p.amax_out == nullptr) f.insert("amax_in"), f.insert("amax_out");
    need_aligned4(f, p.amax_in, "amax_in");
    need_aligned4(f, p.amax_out, "amax_out");
  } else if (p.amax_in != nullptr) {
    f.insert("amax_in");
  }
  if (colwise) need_ptr16(f, p.amax_out, "amax_out");
  if (p.transpose_output) {
    if (!colwise) f.insert("transpose_output");
    if (p.rows % 16 != 0) f.insert("rows");
  }
  if (!sc_ok) return f;
  const i128 n = static_cast<i128>(p.rows) * p.cols;
  const i128 amax_bytes = tensor ? (p.amax_in ? 0 : 4) : (colwise ? i128(p.cols) * 4 : 0);
  overlaps(f, {{p.input, n * 2, "input", false},
               {tensor ? p.amax_in : nullptr, 4, "amax_in", false},
               {p.output, n, "output", true},
               {p.scale_inv, fp8_scale_entries(p.rows, p.cols, p.scaling, p.scale_ld) * 4, "scale_inv", true},
               {p.amax_out, amax_bytes, "amax_out", true}});
  return f;
}

Faults model(const Fp8DequantizeParams& p) {
  Faults f;
  const bool dt_ok = valid_out_dtype(p.output_dtype);
  if (!dt_ok) f.insert("output_dtype");
  if (!valid_fmt(p.format)) f.insert("format");
  const bool sc_ok = valid_scaling(p.scaling);
  if (!sc_ok) f.insert("scaling");
  if (!dims_in_range(f, p.rows, p.cols)) return f;
  bool ok = true;
  if (p.cols % 8 != 0) f.insert("cols"), ok = false;
  elements_limit(f, 1, p.rows, p.cols, false);
  fp8_ld_rules(f, p.rows, p.cols, p.scaling, p.scale_ld);
  if (!ok || p.rows == 0 || p.cols == 0) return f;
  need_ptr16(f, p.input, "input");
  need_ptr16(f, p.output, "output");
  need_ptr16(f, p.scale_inv, "scale_inv");
  if (!sc_ok || !dt_ok) return f;
  const i128 n = static_cast<i128>(p.rows) * p.cols;
  overlaps(f, {{p.input, n, "input", false},
               {p.scale_inv, fp8_scale_entries(p.rows, p.cols, p.scaling, p.scale_ld) * 4, "scale_inv", false},
               {p.output, n * out_size(p.output_dtype), "output", true}});
  return f;
}

// MXFP8 scale bytes (tpcomm/quantize.h): rowwise 1x32 blocks, linear (E*N, K/32) or per expert the swizzled
// [N][K/32] matrix; colwise 32x1 blocks, linear (E, N/32, K) or per expert the swizzled transposed [K][N/32].
i128 mx_row_scales(int64_t e, int64_t n, int64_t k, ScaleLayout l) {
  return l == ScaleLayout::kLinear ? i128(e) * n * (k / 32) : i128(e) * ref::swizzle_count(n, k / 32);
}
i128 mx_col_scales(int64_t e, int64_t n, int64_t k, ScaleLayout l) {
  return l == ScaleLayout::kLinear ? i128(e) * (n / 32) * k : i128(e) * ref::swizzle_count(k, n / 32);
}

bool experts_in_range(Faults& f, int64_t e) {
  if (e < 1 || e > kMaxDim) {
    f.insert("experts");
    return false;
  }
  return true;
}

Faults model(const Mxfp8QuantizeParams& p) {
  Faults f;
  if (p.input_dtype != DType::kBFloat16) f.insert("input_dtype");
  if (!valid_fmt(p.format)) f.insert("format");
  const bool lay_ok = valid_layout(p.scale_layout);
  if (!lay_ok) f.insert("scale_layout");
  if (p.rounding != E8M0Rounding::kFloor && p.rounding != E8M0Rounding::kRceil) f.insert("rounding");
  const bool e_ok = experts_in_range(f, p.experts);
  if (!dims_in_range(f, p.rows, p.cols) || !e_ok) return f;
  const bool row = p.row_data != nullptr || p.row_scales != nullptr;
  const bool col = p.col_data != nullptr || p.col_scales != nullptr;
  bool ok = true;
  if (!row && !col) {
    for (const char* n : {"row_data", "row_scales", "col_data", "col_scales"}) f.insert(n);
    ok = false;
  }
  if (p.cols % (row ? 32 : 8) != 0) f.insert("cols"), ok = false;
  if (col && p.rows % 32 != 0) f.insert("rows"), ok = false;
  elements_limit(f, p.experts, p.rows, p.cols, true);
  if (!ok || p.rows == 0 || p.cols == 0) return f;
  // One kernel numbers the 128x128 tiles of all experts in 32 bits (fast_div.h).
  if (i128(p.experts) * cdiv(p.rows, 128) * cdiv(p.cols, 128) >= (i128(1) << 31)) {
    f.insert("experts");
    f.insert("rows");
    f.insert("cols");
  }
  need_ptr16(f, p.input, "input");
  if (row) need_ptr16(f, p.row_data, "row_data"), need_ptr16(f, p.row_scales, "row_scales");
  if (col) need_ptr16(f, p.col_data, "col_data"), need_ptr16(f, p.col_scales, "col_scales");
  if (!lay_ok) return f;
  const i128 n = i128(p.experts) * p.rows * p.cols;
  overlaps(f, {{p.input, n * 2, "input", false},
               {p.row_data, row ? n : 0, "row_data", true},
               {p.row_scales, row ? mx_row_scales(p.experts, p.rows, p.cols, p.scale_layout) : 0, "row_scales", true},
               {p.col_data, col ? n : 0, "col_data", true},
               {p.col_scales, col ? mx_col_scales(p.experts, p.rows, p.cols, p.scale_layout) : 0, "col_scales",
                true}});
  return f;
}

Faults model(const Mxfp8DequantizeParams& p) {
  Faults f;
  const bool dt_ok = valid_out_dtype(p.output_dtype);
  if (!dt_ok) f.insert("output_dtype");
  if (!valid_fmt(p.format)) f.insert("format");
  const bool lay_ok = valid_layout(p.scale_layout);
  if (!lay_ok) f.insert("scale_layout");
  const bool axis_ok = p.axis == Mxfp8Axis::kRowwise || p.axis == Mxfp8Axis::kColwise;
  if (!axis_ok) f.insert("axis");
  const bool e_ok = experts_in_range(f, p.experts);
  if (!dims_in_range(f, p.rows, p.cols) || !e_ok) return f;
  bool ok = axis_ok;
  if (p.axis == Mxfp8Axis::kRowwise && p.cols % 32 != 0) f.insert("cols"), ok = false;
  if (p.axis == Mxfp8Axis::kColwise && p.rows % 32 != 0) f.insert("rows"), ok = false;
  elements_limit(f, p.experts, p.rows, p.cols, true);
  if (!ok || p.rows == 0 || p.cols == 0) return f;
  need_ptr16(f, p.data, "data");
  need_ptr16(f, p.scales, "scales");
  need_ptr16(f, p.output, "output");
  if (!lay_ok || !dt_ok) return f;
  const i128 n = i128(p.experts) * p.rows * p.cols;
  const i128 sb = p.axis == Mxfp8Axis::kRowwise ? mx_row_scales(p.experts, p.rows, p.cols, p.scale_layout)
                                                : mx_col_scales(p.experts, p.rows, p.cols, p.scale_layout);
  overlaps(f, {{p.data, n, "data", false},
               {p.scales, sb, "scales", false},
               {p.output, n * out_size(p.output_dtype), "output", true}});
  return f;
}

// NVFP4 block scales: linear (rows, cols/16) or the swizzled [rows][cols/16] matrix.
i128 nv_scales(int64_t rows, int64_t cols, ScaleLayout l) {
  return l == ScaleLayout::kLinear ? i128(rows) * (cols / 16) : i128(ref::swizzle_count(rows, cols / 16));
}

Faults model(const Nvfp4QuantizeParams& p) {
  Faults f;
  if (p.input_dtype != DType::kBFloat16) f.insert("input_dtype");
  const bool lay_ok = valid_layout(p.scale_layout);
  if (!lay_ok) f.insert("scale_layout");
  if (p.block != Nvfp4Block::k1x16 && p.block != Nvfp4Block::k16x16) f.insert("block");
  if (!dims_in_range(f, p.rows, p.cols)) return f;
  bool ok = true;
  if (p.cols % 16 != 0) f.insert("cols"), ok = false;
  if (p.block == Nvfp4Block::k16x16 && p.rows % 16 != 0) f.insert("rows"), ok = false;
  elements_limit(f, 1, p.rows, p.cols, false);
  if (!ok || p.rows == 0 || p.cols == 0) return f;
  need_ptr16(f, p.input, "input");
  need_ptr16(f, p.output, "output");
  need_ptr16(f, p.block_scales, "block_scales");
  if (p.global_amax_in == nullptr && p.global_amax_out == nullptr)
    f.insert("global_amax_in"), f.insert("global_amax_out");
  need_aligned4(f, p.global_amax_in, "global_amax_in");
  need_aligned4(f, p.global_amax_out, "global_amax_out");
  need_aligned4(f, p.global_scale_inv, "global_scale_inv");
  if (!lay_ok) return f;
  const i128 n = i128(p.rows) * p.cols;
  overlaps(f, {{p.input, n * 2, "input", false},
               {p.global_amax_in, 4, "global_amax_in", false},
               {p.output, n / 2, "output", true},
               {p.block_scales, nv_scales(p.rows, p.cols, p.scale_layout), "block_scales", true},
               {p.global_amax_in ? nullptr : p.global_amax_out, 4, "global_amax_out", true},
               {p.global_scale_inv, 4, "global_scale_inv", true}});
  return f;
}

Faults model(const Nvfp4DequantizeParams& p) {
  Faults f;
  const bool dt_ok = valid_out_dtype(p.output_dtype);
  if (!dt_ok) f.insert("output_dtype");
  const bool lay_ok = valid_layout(p.scale_layout);
  if (!lay_ok) f.insert("scale_layout");
  if (!dims_in_range(f, p.rows, p.cols)) return f;
  bool ok = true;
  if (p.cols % 16 != 0) f.insert("cols"), ok = false;
  elements_limit(f, 1, p.rows, p.cols, false);
  if (!ok || p.rows == 0 || p.cols == 0) return f;
  need_ptr16(f, p.input, "input");
  need_ptr16(f, p.block_scales, "block_scales");
  need_ptr16(f, p.output, "output");
  if (p.global_scale_inv == nullptr || misaligned(p.global_scale_inv, 4)) f.insert("global_scale_inv");
  if (!lay_ok || !dt_ok) return f;
  const i128 n = i128(p.rows) * p.cols;
  overlaps(f, {{p.input, n / 2, "input", false},
               {p.block_scales, nv_scales(p.rows, p.cols, p.scale_layout), "block_scales", false},
               {p.global_scale_inv, 4, "global_scale_inv", false},
               {p.output, n * out_size(p.output_dtype), "output", true}});
  return f;
}

struct AmaxCall {
  const void* input;
  DType dtype;
  int64_t count;
  float* amax_out;
};

Faults model(const AmaxCall& c) {
  Faults f;
  if (c.dtype != DType::kBFloat16) f.insert("input_dtype");
  if (c.count < 0 || c.count > kMaxElements || c.count % 8 != 0) f.insert("count");
  if (c.amax_out == nullptr || misaligned(c.amax_out, 4)) f.insert("amax_out");
  if (f.count("count") || c.count == 0) return f;
  need_ptr16(f, c.input, "input");
  overlaps(f, {{c.input, i128(c.count) * 2, "input", false}, {c.amax_out, 4, "amax_out", true}});
  return f;
}

// ---- case descriptions (failure messages) -------------------------------------------------------------------------
std::string hex(const void* p) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(p)));
  return b;
}
std::string num(int64_t v) { return std::to_string(v); }
std::string en(int v) { return std::to_string(v); }

std::string describe(const Fp8QuantizeParams& p) {
  return "fp8_quantize{input " + hex(p.input) + " dtype " + en(int(p.input_dtype)) + " rows " + num(p.rows) +
         " cols " + num(p.cols) + " format " + en(int(p.format)) + " scaling " + en(int(p.scaling)) + " output " +
         hex(p.output) + " scale_inv " + hex(p.scale_inv) + " scale_ld " + num(p.scale_ld) + " amax_in " +
         hex(p.amax_in) + " amax_out " + hex(p.amax_out) + " transpose " + en(p.transpose_output) + "}";
}
std::string describe(const Fp8DequantizeParams& p) {
  return "fp8_dequantize{input " + hex(p.input) + " rows " + num(p.rows) + " cols " + num(p.cols) + " format " +
         en(int(p.format)) + " scaling " + en(int(p.scaling)) + " scale_inv " + hex(p.scale_inv) + " scale_ld " +
         num(p.scale_ld) + " output " + hex(p.output) + " output_dtype " + en(int(p.output_dtype)) + "}";
}
std::string describe(const Mxfp8QuantizeParams& p) {
  return "mxfp8_quantize{input " + hex(p.input) + " dtype " + en(int(p.input_dtype)) + " experts " + num(p.experts) +
         " rows " + num(p.rows) + " cols " + num(p.cols) + " format " + en(int(p.format)) + " rounding " +
         en(int(p.rounding)) + " layout " + en(int(p.scale_layout)) + " row_data " + hex(p.row_data) +
         " row_scales " + hex(p.row_scales) + " col_data " + hex(p.col_data) + " col_scales " + hex(p.col_scales) +
         "}";
}
std::string describe(const Mxfp8DequantizeParams& p) {
  return "mxfp8_dequantize{data " + hex(p.data) + " scales " + hex(p.scales) + " axis " + en(int(p.axis)) +
         " experts " + num(p.experts) + " rows " + num(p.rows) + " cols " + num(p.cols) + " format " +
         en(int(p.format)) + " layout " + en(int(p.scale_layout)) + " output " + hex(p.output) + " output_dtype " +
         en(int(p.output_dtype)) + "}";
}
std::string describe(const Nvfp4QuantizeParams& p) {
  return "nvfp4_quantize{input " + hex(p.input) + " dtype " + en(int(p.input_dtype)) + " rows " + num(p.rows) +
         " cols " + num(p.cols) + " block " + en(int(p.block)) + " layout " + en(int(p.scale_layout)) + " output " +
         hex(p.output) + " block_scales " + hex(p.block_scales) + " amax_in " + hex(p.global_amax_in) +
         " amax_out " + hex(p.global_amax_out) + " scale_inv " + hex(p.global_scale_inv) + "}";
}
std::string describe(const Nvfp4DequantizeParams& p) {
  return "nvfp4_dequantize{input " + hex(p.input) + " block_scales " + hex(p.block_scales) + " global_scale_inv " +
         hex(p.global_scale_inv) + " rows " + num(p.rows) + " cols " + num(p.cols) + " layout " +
         en(int(p.scale_layout)) + " output " + hex(p.output) + " output_dtype " + en(int(p.output_dtype)) + "}";
}
std::string describe(const AmaxCall& c) {
  return "compute_amax{input " + hex(c.input) + " dtype " + en(int(c.dtype)) + " count " + num(c.count) +
         " amax_out " + hex(c.amax_out) + "}";
}

// ---- generators ---------------------------------------------------------------------------------------------------
int64_t scale_ld(Gen& g, int64_t rows, int64_t cols, Fp8Scaling s) {
  const uint64_t r = g.u(100);
  if (r < 55) return 0;
  const int64_t need = s == Fp8Scaling::kBlock128x128 ? cdiv(std::max<int64_t>(cols, 0), 128) : rows;
  if (r < 85) return need + static_cast<int64_t>(g.u(5)) - 2;
  if (r < 92) return static_cast<int64_t>(g.u(1000));
  if (r < 96) return kMaxDim + static_cast<int64_t>(g.u(3)) - 1;
  return -1 - static_cast<int64_t>(g.u(10));
}

Fp8QuantizeParams gen_fp8(Gen& g) {
  Fp8QuantizeParams p;
  p.input_dtype = g.dtype(DType::kBFloat16, 97);
  p.format = g.enum_of<Fp8Format>(2);
  p.scaling = g.enum_of<Fp8Scaling>(5);
  p.cols = g.dim(g.pct(90) ? 8 : 1);
  p.rows = g.dim(g.pct(30) ? 16 : 1, std::max<int64_t>(p.cols, 1));
  p.scale_ld = scale_ld(g, p.rows, p.cols, p.scaling);
  p.pow2_scales = g.pct(50);
  const i128 n = i128(p.rows) * p.cols;
  Ptrs ptrs;
  p.input = ptrs.ptr<const void>(g, nominal(n * 2));
  p.output = ptrs.ptr<void>(g, nominal(n));
  const bool sc_ok = valid_scaling(p.scaling);
  p.scale_inv = ptrs.ptr<float>(g, nominal(sc_ok ? fp8_scale_entries(p.rows, p.cols, p.scaling, p.scale_ld) * 4 : 4));
  const bool tensor = p.scaling == Fp8Scaling::kTensorwise;
  // amax_in: tensorwise half the time (else mostly null); amax_out where the op computes an amax (else sometimes).
  if (tensor ? g.pct(50) : g.pct(4)) p.amax_in = ptrs.ptr<const float>(g, 4);
  const bool wants_out = (tensor && p.amax_in == nullptr) || p.scaling == Fp8Scaling::kColwise;
  if (wants_out ? g.pct(97) : g.pct(20))
    p.amax_out = ptrs.ptr<float>(g, nominal(p.scaling == Fp8Scaling::kColwise ? i128(p.cols) * 4 : 4));
  p.transpose_output = p.scaling == Fp8Scaling::kColwise ? g.pct(40) : g.pct(3);
  return p;
}

Fp8DequantizeParams gen_fp8_dequant(Gen& g) {
  Fp8DequantizeParams p;
  p.format = g.enum_of<Fp8Format>(2);
  p.scaling = g.enum_of<Fp8Scaling>(5);
  p.output_dtype = g.pct(50) ? DType::kBFloat16 : g.dtype(DType::kFloat32, 90);
  p.cols = g.dim(g.pct(90) ? 8 : 1);
  p.rows = g.dim(1, std::max<int64_t>(p.cols, 1));
  p.scale_ld = scale_ld(g, p.rows, p.cols, p.scaling);
  const i128 n = i128(p.rows) * p.cols;
  Ptrs ptrs;
  p.input = ptrs.ptr<const void>(g, nominal(n));
  const bool sc_ok = valid_scaling(p.scaling);
  p.scale_inv =
      ptrs.ptr<const float>(g, nominal(sc_ok ? fp8_scale_entries(p.rows, p.cols, p.scaling, p.scale_ld) * 4 : 4));
  p.output = ptrs.ptr<void>(g, nominal(n * 4));
  return p;
}

ScaleLayout gen_layout(Gen& g) { return g.enum_of<ScaleLayout>(2); }

Mxfp8QuantizeParams gen_mxfp8(Gen& g) {
  Mxfp8QuantizeParams p;
  p.input_dtype = g.dtype(DType::kBFloat16, 97);
  p.format = g.enum_of<Fp8Format>(2);
  p.rounding = g.enum_of<E8M0Rounding>(2);
  p.scale_layout = gen_layout(g);
  const uint64_t er = g.u(100);
  p.experts = er < 60 ? 1 : er < 90 ? 1 + static_cast<int64_t>(g.u(16)) : er < 96 ? g.dim(1) : 1 + (int64_t(1) << 24);
  const int outputs = static_cast<int>(g.u(100) < 3 ? 0 : 1 + g.u(3));  // bit 0 rowwise, bit 1 colwise
  const bool row = outputs & 1, col = outputs & 2;
  p.cols = g.dim(g.pct(90) ? (row ? 32 : 8) : 1);
  p.rows = g.dim(g.pct(90) && col ? 32 : 1, std::max<int64_t>(p.cols, 1) * std::max<int64_t>(p.experts, 1));
  const i128 n = i128(p.experts) * p.rows * p.cols;
  const bool lay_ok = valid_layout(p.scale_layout);
  Ptrs ptrs;
  p.input = ptrs.ptr<const void>(g, nominal(n * 2));
  // An output pair is set together, except sometimes one half alone (a mismatched request).
  if (row || g.pct(3)) p.row_data = ptrs.ptr<void>(g, nominal(n));
  if (row || g.pct(3))
    p.row_scales = ptrs.ptr<uint8_t>(g, nominal(lay_ok && p.experts > 0 && p.rows >= 0 && p.cols >= 0
                                                    ? mx_row_scales(p.experts, p.rows, p.cols, p.scale_layout)
                                                    : 64));
  if (col || g.pct(3)) p.col_data = ptrs.ptr<void>(g, nominal(n));
  if (col || g.pct(3))
    p.col_scales = ptrs.ptr<uint8_t>(g, nominal(lay_ok && p.experts > 0 && p.rows >= 0 && p.cols >= 0
                                                    ? mx_col_scales(p.experts, p.rows, p.cols, p.scale_layout)
                                                    : 64));
  return p;
}

Mxfp8DequantizeParams gen_mxfp8_dequant(Gen& g) {
  Mxfp8DequantizeParams p;
  p.axis = g.enum_of<Mxfp8Axis>(2);
  p.format = g.enum_of<Fp8Format>(2);
  p.scale_layout = gen_layout(g);
  p.output_dtype = g.pct(50) ? DType::kBFloat16 : g.dtype(DType::kFloat32, 90);
  p.experts = g.pct(70) ? 1 : (g.pct(90) ? 1 + static_cast<int64_t>(g.u(8)) : g.dim(1));
  const bool row = p.axis == Mxfp8Axis::kRowwise;
  p.cols = g.dim(g.pct(90) ? (row ? 32 : 8) : 1);
  p.rows = g.dim(g.pct(90) && !row ? 32 : 1, std::max<int64_t>(p.cols, 1) * std::max<int64_t>(p.experts, 1));
  const i128 n = i128(p.experts) * p.rows * p.cols;
  Ptrs ptrs;
  p.data = ptrs.ptr<const void>(g, nominal(n));
  p.scales = ptrs.ptr<const uint8_t>(g, nominal(n / 32));
  p.output = ptrs.ptr<void>(g, nominal(n * 4));
  return p;
}

Nvfp4QuantizeParams gen_nvfp4(Gen& g) {
  Nvfp4QuantizeParams p;
  p.input_dtype = g.dtype(DType::kBFloat16, 97);
  p.block = g.enum_of<Nvfp4Block>(2);
  p.scale_layout = gen_layout(g);
  p.cols = g.dim(g.pct(90) ? 16 : 1);
  p.rows = g.dim(g.pct(90) && p.block == Nvfp4Block::k16x16 ? 16 : 1, std::max<int64_t>(p.cols, 1));
  const i128 n = i128(p.rows) * p.cols;
  Ptrs ptrs;
  p.input = ptrs.ptr<const void>(g, nominal(n * 2));
  p.output = ptrs.ptr<void>(g, nominal(n / 2));
  p.block_scales = ptrs.ptr<uint8_t>(g, nominal(n / 16 + 1024));
  const uint64_t a = g.u(100);  // given amax, computed amax, both (the given one wins), neither
  if (a < 45 || (a >= 90 && a < 97)) p.global_amax_in = ptrs.ptr<const float>(g, 4);
  if (a >= 45) p.global_amax_out = ptrs.ptr<float>(g, 4);
  if (a >= 97) p.global_amax_in = nullptr, p.global_amax_out = nullptr;
  if (g.pct(80)) p.global_scale_inv = ptrs.ptr<float>(g, 4);
  return p;
}

Nvfp4DequantizeParams gen_nvfp4_dequant(Gen& g) {
  Nvfp4DequantizeParams p;
  p.scale_layout = gen_layout(g);
  p.output_dtype = g.pct(50) ? DType::kBFloat16 : g.dtype(DType::kFloat32, 90);
  p.cols = g.dim(g.pct(90) ? 16 : 1);
  p.rows = g.dim(1, std::max<int64_t>(p.cols, 1));
  const i128 n = i128(p.rows) * p.cols;
  Ptrs ptrs;
  p.input = ptrs.ptr<const void>(g, nominal(n / 2));
  p.block_scales = ptrs.ptr<const uint8_t>(g, nominal(n / 16 + 1024));
  p.global_scale_inv = ptrs.ptr<const float>(g, 4);
  p.output = ptrs.ptr<void>(g, nominal(n * 4));
  return p;
}

AmaxCall gen_amax(Gen& g) {
  AmaxCall c;
  c.dtype = g.dtype(DType::kBFloat16, 95);
  const uint64_t r = g.u(100);
  c.count = r < 80 ? g.dim(g.pct(90) ? 8 : 1) : (r < 90 ? kMaxElements + 8 * (static_cast<int64_t>(g.u(3)) - 1)
                                                        : g.dim(8, int64_t(1) << 20));
  Ptrs ptrs;
  c.input = ptrs.ptr<const void>(g, nominal(i128(c.count) * 2));
  c.amax_out = ptrs.ptr<float>(g, 4);
  return c;
}

// Runs `cases` random cases of one validator.
template <class Gen_, class Call>
void fuzz(const char* what, Gen_&& gen, Call&& call, int64_t cases = kDefaultCases) {
  const uint64_t seed = test::fuzz_seed();
  const int64_t n = test::fuzz_cases(cases);
  test::FuzzTally tally;
  for (int64_t i = 0; i < n; ++i) {
    Gen g(seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1)));
    const auto p = gen(g);
    test::check_case([&] { call(p); }, model(p), seed, i, [&] { return describe(p); }, tally);
  }
  test::expect_both_outcomes(tally, what);
}

}  // namespace

TEST(QuantValidateFuzz, Fp8Quantize) {
  fuzz("fp8_quantize", gen_fp8, [](const Fp8QuantizeParams& p) { detail::validate(p); });
}

TEST(QuantValidateFuzz, Fp8Dequantize) {
  fuzz("fp8_dequantize", gen_fp8_dequant, [](const Fp8DequantizeParams& p) { detail::validate(p); });
}

TEST(QuantValidateFuzz, Mxfp8Quantize) {
  fuzz("mxfp8_quantize", gen_mxfp8, [](const Mxfp8QuantizeParams& p) { detail::validate(p); });
}

TEST(QuantValidateFuzz, Mxfp8Dequantize) {
  fuzz("mxfp8_dequantize", gen_mxfp8_dequant, [](const Mxfp8DequantizeParams& p) { detail::validate(p); });
}

TEST(QuantValidateFuzz, Nvfp4Quantize) {
  fuzz("nvfp4_quantize", gen_nvfp4, [](const Nvfp4QuantizeParams& p) { detail::validate(p); });
}

TEST(QuantValidateFuzz, Nvfp4Dequantize) {
  fuzz("nvfp4_dequantize", gen_nvfp4_dequant, [](const Nvfp4DequantizeParams& p) { detail::validate(p); });
}

TEST(QuantValidateFuzz, ComputeAmax) {
  fuzz("compute_amax", gen_amax,
       [](const AmaxCall& c) { detail::validate_amax(c.input, c.dtype, c.count, c.amax_out); });
}

// The size limits exactly at their edges (the random cases reach them only now and then).
TEST(QuantValidateFuzz, SizeLimitsAtTheirEdges) {
  Fp8QuantizeParams p;
  p.input = reinterpret_cast<const void*>(uintptr_t(1) << 44);
  p.output = reinterpret_cast<void*>(uintptr_t(2) << 44);
  p.scale_inv = reinterpret_cast<float*>(uintptr_t(3) << 44);
  p.rows = int64_t(1) << 20;
  p.cols = int64_t(1) << 20;  // exactly 2^40 elements
  EXPECT_NO_THROW(detail::validate(p));
  p.cols += 8;
  EXPECT_THROW(detail::validate(p), Error);
  p.rows = kMaxDim;
  p.cols = 8;
  EXPECT_NO_THROW(detail::validate(p));
  p.rows = kMaxDim + 1;
  EXPECT_THROW(detail::validate(p), Error);
  Mxfp8QuantizeParams m;
  m.input = p.input;
  m.col_data = p.output;
  m.col_scales = reinterpret_cast<uint8_t*>(uintptr_t(3) << 44);
  m.experts = int64_t(1) << 17;  // 2^17 x 128 x 128 = 2^31 tiles of 128 x 128 elements (2^45 elements)
  m.rows = 128 * 128;
  m.cols = 128 * 128;
  EXPECT_THROW(detail::validate(m), Error);
  m.experts = int64_t(1) << 8;  // 2^8 x 2^14 x 2^14 elements = 2^36: fine
  EXPECT_NO_THROW(detail::validate(m));
}
