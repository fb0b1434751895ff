// tpcomm-bench quantize: every quantization kernel on the issue's shapes, median time (eager and CUDA graph) and
// logical bandwidth (input read once + outputs written once) next to the device-to-device copy bandwidth
// measured in the same run.
//
// Inputs are rotated among several buffer sets so that each call reads data that is not in L2 (a rotation
// covers at least 4x the L2 size, or the tensor itself is larger than that).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "../../tests/quantize/quant_ref.h"
#include "common.h"
#include "quantize/quantize_probe.h"
#include "suites.h"
#include "tpcomm/error.h"
#include "tpcomm/quantize.h"

namespace tpcomm::bench {
namespace {

using namespace tpcomm::quant;

// ---- device fill --------------------------------------------------------------------------------------------------
__global__ void fill_random_bf16(uint16_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const uint32_t mant = static_cast<uint32_t>(z & 0x7f);
    const uint32_t ex = 127u + static_cast<uint32_t>((z >> 8) % 17) - 8u;  // magnitudes 2^-8 .. 2^9
    const uint32_t sign = static_cast<uint32_t>((z >> 20) & 1);
    p[i] = static_cast<uint16_t>((sign << 15) | (ex << 7) | mant);
  }
}

// ---- host helpers -----------------------------------------------------------------------------------------------
template <class T>
std::vector<T> dl(const void* dev, size_t count) {
  std::vector<T> h(count);
  if (count) BENCH_CUDA(cudaMemcpy(h.data(), dev, count * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
// rows x width bytes from a pitched device region.
std::vector<uint8_t> dl2d(const void* dev, size_t pitch, size_t width, size_t rows) {
  std::vector<uint8_t> h(width * rows);
  if (!h.empty()) BENCH_CUDA(cudaMemcpy2D(h.data(), width, dev, pitch, width, rows, cudaMemcpyDeviceToHost));
  return h;
}
template <class T>
bool eq_vec(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if constexpr (std::is_same_v<T, float>) {
      uint32_t x, y;
      std::memcpy(&x, &a[i], 4);
      std::memcpy(&y, &b[i], 4);
      if (x != y && !(std::isnan(a[i]) && std::isnan(b[i]))) return false;
    } else if (a[i] != b[i]) {
      return false;
    }
  }
  return true;
}
float host_amax(const std::vector<uint16_t>& x) { return ref::amax_of(x.data(), static_cast<int64_t>(x.size())); }

size_t align_up(size_t v, size_t a = 256) { return (v + a - 1) / a * a; }

// ---- one benchmark case ------------------------------------------------------------------------------------------
struct Op {
  std::string kernel;
  std::string dtype_in = "bf16";
  std::vector<long long> shape;
  std::string scale_mode;    // rceil | floor | fp32 | e4m3
  std::string scale_layout = "linear";
  double logical_bytes = 0;  // input once + outputs once
  size_t in_bytes = 0;       // per buffer set
  size_t out_bytes = 0;      // per buffer set (allocation)
  std::function<void(uint8_t* in, uint8_t* out, cudaStream_t)> launch;
  std::function<bool(uint8_t* in, uint8_t* out)> check;  // runs after launch(in, out) completed
};

struct Options {
  std::string out_dir = "bench/results/local";
  std::string json_path;
  std::vector<std::string> kernels;
  std::vector<int64_t> experts;  // 3-D expert counts (default: the issue's list)
  bool quick = false;
  bool check = false;
  bool probe = true;   // memory-path probe (cheap), recorded in the JSON
  bool once = false;   // launch every probe and every case once, untimed (for profilers such as ncu)
};

bool wanted(const Options& o, const std::string& k) {
  return o.kernels.empty() || std::find(o.kernels.begin(), o.kernels.end(), k) != o.kernels.end();
}

// Scratch device scalars shared by the cases (given amax, computed amax, NVFP4 global scale).
struct Scalars {
  float* given_amax;  // [0] = value used as the precomputed amax
  float* amax_out;
  float* gscale;
};

constexpr float kGivenAmax = 512.0f;  // >= every value the random fill produces (|x| < 2^10)

// ---- op builders ---------------------------------------------------------------------------------------------------
// transposed: colwise with Fp8QuantizeParams::transpose_output ((K, M) output).
Op fp8_op(const std::string& name, Fp8Scaling sc, int64_t M, int64_t K, bool static_amax, const Scalars& s,
          bool transposed = false) {
  Op op;
  op.kernel = name;
  op.shape = {M, K};
  op.scale_mode = "fp32";
  const size_t n = static_cast<size_t>(M * K);
  const int64_t nsc = fp8_scale_count(M, K, sc);
  op.in_bytes = align_up(n * 2);
  const size_t data_off = 0, sc_off = align_up(n), amax_off = sc_off + align_up(nsc * 4);
  op.out_bytes = amax_off + align_up(static_cast<size_t>(K) * 4);
  op.logical_bytes = double(n) * 3 + double(nsc) * 4;
  auto params = [=](uint8_t* in, uint8_t* out) {
    Fp8QuantizeParams p;
    p.input = in;
    p.rows = M;
    p.cols = K;
    p.scaling = sc;
    p.output = out + data_off;
    p.scale_inv = reinterpret_cast<float*>(out + sc_off);
    if (sc == Fp8Scaling::kTensorwise && static_amax) p.amax_in = s.given_amax;
    if ((sc == Fp8Scaling::kTensorwise && !static_amax) || sc == Fp8Scaling::kColwise)
      p.amax_out = reinterpret_cast<float*>(out + amax_off);
    p.transpose_output = transposed;
    return p;
  };
  op.launch = [=](uint8_t* in, uint8_t* out, cudaStream_t st) { fp8_quantize(params(in, out), st); };
  op.check = [=](uint8_t* in, uint8_t* out) {
    // Window: the last 128 rows (all columns).
    const int64_t W = std::min<int64_t>(128, M), r0 = M - W;
    auto x = dl<uint16_t>(in + r0 * K * 2, static_cast<size_t>(W * K));
    std::vector<uint8_t> gdata;
    if (transposed) {
      // Rows r0.. of every output row (= input column), brought back row-major for the comparison below.
      std::vector<uint8_t> t(static_cast<size_t>(W * K));
      BENCH_CUDA(cudaMemcpy2D(t.data(), W, out + data_off + r0, M, W, K, cudaMemcpyDeviceToHost));
      gdata.resize(t.size());
      for (int64_t c = 0; c < K; ++c)
        for (int64_t r = 0; r < W; ++r) gdata[r * K + c] = t[c * W + r];
    } else {
      gdata = dl<uint8_t>(out + data_off + r0 * K, static_cast<size_t>(W * K));
    }
    if (sc == Fp8Scaling::kTensorwise) {
      const float amax = static_amax ? kGivenAmax : host_amax(dl<uint16_t>(in, n));
      const auto want = ref::fp8_quantize(x, W, K, Fp8Format::kE4M3, sc, false, 0, &amax);
      bool ok = eq_vec(gdata, want.data) && eq_vec(dl<float>(out + sc_off, 1), want.scale_inv);
      if (!static_amax) ok = ok && eq_vec(dl<float>(out + amax_off, 1), std::vector<float>{amax});
      return ok;
    }
    if (sc == Fp8Scaling::kColwise) {
      // Append one row holding each column's amax: the window's colwise reference then sees the full-tensor amax.
      const auto full = dl<uint16_t>(in, n);
      std::vector<float> camax(static_cast<size_t>(K), 0.0f);
      for (int64_t r = 0; r < M; ++r)  // row order: cache friendly
        for (int64_t c = 0; c < K; ++c) {
          const float v = std::fabs(ref::bf16_to_float(full[r * K + c]));
          if (std::isnan(v) || std::isnan(camax[c])) camax[c] = NAN;
          else camax[c] = std::max(camax[c], v);
        }
      for (int64_t c = 0; c < K; ++c) x.push_back(ref::float_to_bf16(camax[c]));
      const auto want = ref::fp8_quantize(x, W + 1, K, Fp8Format::kE4M3, sc, false);
      std::vector<uint8_t> wdata(want.data.begin(), want.data.begin() + W * K);
      return eq_vec(gdata, wdata) && eq_vec(dl<float>(out + sc_off, K), want.scale_inv) &&
             eq_vec(dl<float>(out + amax_off, K), camax);
    }
    if (sc == Fp8Scaling::kBlock128x128 && r0 % 128 != 0) return false;
    const auto want = ref::fp8_quantize(x, W, K, Fp8Format::kE4M3, sc, false);
    bool ok = eq_vec(gdata, want.data);
    if (sc == Fp8Scaling::kRowwise) ok = ok && eq_vec(dl<float>(out + sc_off + r0 * 4, W), want.scale_inv);
    if (sc == Fp8Scaling::kBlock1x128) {
      for (int64_t kb = 0; kb < (K + 127) / 128; ++kb) {
        const auto g = dl<float>(out + sc_off + (kb * M + r0) * 4, W);
        ok = ok && eq_vec(g, std::vector<float>(want.scale_inv.begin() + kb * W, want.scale_inv.begin() + (kb + 1) * W));
      }
    }
    if (sc == Fp8Scaling::kBlock128x128) {
      const int64_t nb = (K + 127) / 128;
      ok = ok && eq_vec(dl<float>(out + sc_off + (r0 / 128) * nb * 4, nb), want.scale_inv);
    }
    return ok;
  };
  return op;
}

// MXFP8 on (E, N, K): rowwise and/or colwise.
Op mxfp8_op(const std::string& name, int64_t E, int64_t N, int64_t K, bool row, bool col, E8M0Rounding rnd,
            ScaleLayout lay, bool three_d) {
  Op op;
  op.kernel = name;
  op.shape = three_d ? std::vector<long long>{E, N, K} : std::vector<long long>{N, K};
  op.scale_mode = e8m0_rounding_name(rnd);
  op.scale_layout = scale_layout_name(lay);
  const size_t n = static_cast<size_t>(E * N * K);
  const size_t rs = row ? static_cast<size_t>(mxfp8_row_scale_bytes(E, N, K, lay)) : 0;
  const size_t cs = col ? static_cast<size_t>(mxfp8_col_scale_bytes(E, N, K, lay)) : 0;
  op.in_bytes = align_up(n * 2);
  const size_t rd_off = 0, rs_off = row ? align_up(n) : 0, cd_off = rs_off + align_up(rs), cs_off = cd_off + (col ? align_up(n) : 0);
  op.out_bytes = cs_off + align_up(cs);
  op.logical_bytes = double(n) * 2 + (row ? double(n) + double(rs) : 0) + (col ? double(n) + double(cs) : 0);
  auto params = [=](uint8_t* in, uint8_t* out) {
    Mxfp8QuantizeParams p;
    p.input = in;
    p.experts = E;
    p.rows = N;
    p.cols = K;
    p.rounding = rnd;
    p.scale_layout = lay;
    if (row) {
      p.row_data = out + rd_off;
      p.row_scales = out + rs_off;
    }
    if (col) {
      p.col_data = out + cd_off;
      p.col_scales = out + cs_off;
    }
    return p;
  };
  op.launch = [=](uint8_t* in, uint8_t* out, cudaStream_t st) { mxfp8_quantize(params(in, out), st); };
  op.check = [=](uint8_t* in, uint8_t* out) {
    const int64_t e = E - 1, W = std::min<int64_t>(64, N), n0 = N - W;
    const auto x = dl<uint16_t>(in + (e * N + n0) * K * 2, static_cast<size_t>(W * K));
    const auto want = ref::mxfp8_quantize(x, 1, W, K, Fp8Format::kE4M3, rnd, ScaleLayout::kLinear, row, col);
    bool ok = true;
    if (row) {
      ok = ok && eq_vec(dl<uint8_t>(out + rd_off + (e * N + n0) * K, static_cast<size_t>(W * K)), want.row_data);
      const int64_t gk = K / 32;
      if (lay == ScaleLayout::kLinear) {
        ok = ok && eq_vec(dl<uint8_t>(out + rs_off + (e * N + n0) * gk, static_cast<size_t>(W * gk)), want.row_scales);
      } else {
        const int64_t per = swizzled_scale_count(N, gk);
        const auto blk = dl<uint8_t>(out + rs_off + e * per, static_cast<size_t>(per));
        for (int64_t i = 0; i < W && ok; ++i)
          for (int64_t g = 0; g < gk; ++g)
            if (blk[swizzled_scale_offset(n0 + i, g, gk)] != want.row_scales[i * gk + g]) ok = false;
      }
    }
    if (col) {
      ok = ok && eq_vec(dl2d(out + cd_off + e * N * K + n0, N, W, K), want.col_data);
      const int64_t gn = N / 32;
      if (lay == ScaleLayout::kLinear) {
        ok = ok && eq_vec(dl<uint8_t>(out + cs_off + (e * gn + n0 / 32) * K, static_cast<size_t>(W / 32 * K)), want.col_scales);
      } else {
        const int64_t per = swizzled_scale_count(K, gn);
        const auto blk = dl<uint8_t>(out + cs_off + e * per, static_cast<size_t>(per));
        for (int64_t g = 0; g < W / 32 && ok; ++g)
          for (int64_t k = 0; k < K; ++k)
            if (blk[swizzled_scale_offset(k, n0 / 32 + g, gn)] != want.col_scales[g * K + k]) ok = false;
      }
    }
    return ok;
  };
  return op;
}

Op nvfp4_op(const std::string& name, int64_t M, int64_t K, Nvfp4Block blk, bool static_amax, const Scalars& s) {
  Op op;
  op.kernel = name;
  op.shape = {M, K};
  op.scale_mode = "e4m3";
  const size_t n = static_cast<size_t>(M * K);
  const size_t ns = static_cast<size_t>(nvfp4_scale_bytes(M, K, ScaleLayout::kLinear));
  op.in_bytes = align_up(n * 2);
  const size_t d_off = 0, s_off = align_up(n / 2), a_off = s_off + align_up(ns), g_off = a_off + 256;
  op.out_bytes = g_off + 256;
  op.logical_bytes = double(n) * 2.5 + double(ns);
  auto params = [=](uint8_t* in, uint8_t* out) {
    Nvfp4QuantizeParams p;
    p.input = in;
    p.rows = M;
    p.cols = K;
    p.block = blk;
    p.output = out + d_off;
    p.block_scales = out + s_off;
    if (static_amax) p.global_amax_in = s.given_amax;
    else p.global_amax_out = reinterpret_cast<float*>(out + a_off);
    p.global_scale_inv = reinterpret_cast<float*>(out + g_off);
    return p;
  };
  op.launch = [=](uint8_t* in, uint8_t* out, cudaStream_t st) { nvfp4_quantize(params(in, out), st); };
  op.check = [=](uint8_t* in, uint8_t* out) {
    const int64_t W = std::min<int64_t>(128, M), r0 = M - W;
    if (r0 % 16) return false;
    const float amax = static_amax ? kGivenAmax : host_amax(dl<uint16_t>(in, n));
    const auto x = dl<uint16_t>(in + r0 * K * 2, static_cast<size_t>(W * K));
    const auto want = ref::nvfp4_quantize(x, W, K, blk, ScaleLayout::kLinear, &amax);
    bool ok = eq_vec(dl<uint8_t>(out + d_off + r0 * K / 2, static_cast<size_t>(W * K / 2)), want.data) &&
              eq_vec(dl<uint8_t>(out + s_off + r0 * (K / 16), static_cast<size_t>(W * K / 16)), want.scales) &&
              eq_vec(dl<float>(out + g_off, 1), std::vector<float>{want.global_scale_inv});
    if (!static_amax) ok = ok && eq_vec(dl<float>(out + a_off, 1), std::vector<float>{amax});
    return ok;
  };
  return op;
}

// Dequantize ops read random bytes (the bf16 fill reinterpreted) as quantized data and scales.
Op dequant_op(const std::string& name, int64_t M, int64_t K) {
  Op op;
  op.kernel = name;
  op.shape = {M, K};
  const size_t n = static_cast<size_t>(M * K);
  const bool fp8 = name == "fp8_rowwise_dequant", mx = name == "mxfp8_rowwise_dequant";
  op.dtype_in = fp8 || mx ? "e4m3" : "e2m1";
  op.scale_mode = fp8 ? "fp32" : (mx ? "e8m0" : "e4m3");
  const size_t qbytes = fp8 || mx ? n : n / 2;
  const size_t sbytes = fp8 ? static_cast<size_t>(M) * 4 : (mx ? n / 32 : n / 16);
  const size_t q_off = 0, s_off = align_up(qbytes), g_off = s_off + align_up(sbytes);
  op.in_bytes = g_off + 256;
  op.out_bytes = align_up(n * 2);
  op.logical_bytes = double(qbytes) + double(sbytes) + double(n) * 2;
  op.launch = [=](uint8_t* in, uint8_t* out, cudaStream_t st) {
    if (fp8) {
      Fp8DequantizeParams p;
      p.input = in + q_off;
      p.rows = M;
      p.cols = K;
      p.scaling = Fp8Scaling::kRowwise;
      p.scale_inv = reinterpret_cast<const float*>(in + s_off);
      p.output = out;
      fp8_dequantize(p, st);
    } else if (mx) {
      Mxfp8DequantizeParams p;
      p.data = in + q_off;
      p.scales = in + s_off;
      p.rows = M;
      p.cols = K;
      p.output = out;
      mxfp8_dequantize(p, st);
    } else {
      Nvfp4DequantizeParams p;
      p.input = in + q_off;
      p.block_scales = in + s_off;
      p.global_scale_inv = reinterpret_cast<const float*>(in + g_off);
      p.rows = M;
      p.cols = K;
      p.output = out;
      nvfp4_dequantize(p, st);
    }
  };
  op.check = [=](uint8_t* in, uint8_t* out) {
    const int64_t W = std::min<int64_t>(128, M), r0 = M - W;
    const auto got = dl<uint16_t>(out + r0 * K * 2, static_cast<size_t>(W * K));
    std::vector<uint32_t> want;
    if (fp8) {
      const auto q = dl<uint8_t>(in + q_off + r0 * K, static_cast<size_t>(W * K));
      want = ref::fp8_dequantize(q, W, K, Fp8Format::kE4M3, Fp8Scaling::kRowwise, dl<float>(in + s_off + r0 * 4, W), 0,
                                 DType::kBFloat16);
    } else if (mx) {
      const auto q = dl<uint8_t>(in + q_off + r0 * K, static_cast<size_t>(W * K));
      const auto sc = dl<uint8_t>(in + s_off + r0 * (K / 32), static_cast<size_t>(W * K / 32));
      want = ref::mxfp8_dequantize(q, sc, Mxfp8Axis::kRowwise, 1, W, K, Fp8Format::kE4M3, ScaleLayout::kLinear,
                                   DType::kBFloat16);
    } else {
      const auto q = dl<uint8_t>(in + q_off + r0 * K / 2, static_cast<size_t>(W * K / 2));
      const auto sc = dl<uint8_t>(in + s_off + r0 * (K / 16), static_cast<size_t>(W * K / 16));
      want = ref::nvfp4_dequantize(q, sc, dl<float>(in + g_off, 1)[0], W, K, ScaleLayout::kLinear, DType::kBFloat16);
    }
    return eq_vec(std::vector<uint32_t>(got.begin(), got.end()), want);
  };
  return op;
}

void print_help() {
  std::printf(
      "usage: tpcomm-bench quantize [--out DIR] [--json PATH] [--kernels a,b] [--quick] [--check]\n"
      "  --out DIR      write DIR/quantize.json (default bench/results/local)\n"
      "  --json PATH    write the JSON to PATH instead\n"
      "  --kernels a,b  only these kernels: fp8_tensorwise fp8_tensorwise_static fp8_rowwise fp8_colwise fp8_colwise_t\n"
      "                 fp8_1x128 fp8_128x128 mxfp8_rowwise mxfp8_colwise mxfp8_both mxfp8_colwise_3d nvfp4_1x16\n"
      "                 nvfp4_1x16_amax nvfp4_16x16 fp8_rowwise_dequant mxfp8_rowwise_dequant nvfp4_dequant\n"
      "  --quick        a few shapes (smoke test)\n"
      "  --experts a,b  3-D MXFP8 expert counts (default 1,2,4,8,16,32,64,128)\n"
      "  --check        verify one window of every case against the CPU reference (\"correct\" in the JSON)\n"
      "  --no-probe     skip the memory-path probe (SM copy kernels, TMA stores, memcpy, memset)\n"
      "  --once         launch each probe and case once without timing (for ncu); writes no JSON\n"
      "Other options (taken by other suites) are ignored.\n");
}

}  // namespace

int run_quantize_suite(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : std::string(); };
    if (a == "--help" || a == "-h") {
      print_help();
      return 0;
    } else if (a == "--out") {
      o.out_dir = next();
    } else if (a == "--json") {
      o.json_path = next();
    } else if (a == "--kernels") {
      std::string s = next();
      size_t pos = 0;
      while (pos <= s.size()) {
        const size_t c = s.find(',', pos);
        const std::string k = s.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
        if (!k.empty()) o.kernels.push_back(k);
        if (c == std::string::npos) break;
        pos = c + 1;
      }
    } else if (a == "--experts") {
      std::string v = next();
      size_t pos = 0;
      while (pos <= v.size()) {
        const size_t c = v.find(',', pos);
        const std::string k = v.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
        if (!k.empty()) o.experts.push_back(std::stoll(k));
        if (c == std::string::npos) break;
        pos = c + 1;
      }
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--check") {
      o.check = true;
    } else if (a == "--no-probe") {
      o.probe = false;
    } else if (a == "--once") {
      o.once = true;
    }
    // anything else belongs to another suite
  }
  if (o.json_path.empty()) o.json_path = o.out_dir + "/quantize.json";

  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("quantize: skipped (no CUDA device)\n");
    return 0;
  }
  BENCH_CUDA(cudaSetDevice(0));
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  const std::string command = "tpcomm-bench " + join_command(argc, argv);
  std::printf("# %s\n# device: %s, %d SMs, L2 %.0f MB\n", command.c_str(), prop.name, prop.multiProcessorCount,
              prop.l2CacheSize / 1e6);
  const double copy_GBps = measure_copy_GBps();
  std::printf("# device-to-device copy: %.0f GB/s (read + write, 1 GiB)\n", copy_GBps);
  std::fflush(stdout);

  // ---- cases -----------------------------------------------------------------------------------------------------
  std::vector<std::pair<int64_t, int64_t>> shapes2d = {{8192, 8192}, {16384, 7168}, {4096, 14336}, {2048, 5120}};
  std::vector<int64_t> experts = {1, 2, 4, 8, 16, 32, 64, 128};
  std::vector<std::pair<int64_t, int64_t>> nk3d = {{8192, 5120}, {4096, 2048}, {2048, 7168}};
  if (o.quick) {
    shapes2d = {{2048, 5120}};
    experts = {1, 8};
    nk3d = {{4096, 2048}};
  }
  if (!o.experts.empty()) experts = o.experts;
  Scalars sc{};
  BENCH_CUDA(cudaMalloc(&sc.given_amax, 256));
  sc.amax_out = sc.given_amax + 16;
  sc.gscale = sc.given_amax + 32;
  BENCH_CUDA(cudaMemcpy(sc.given_amax, &kGivenAmax, 4, cudaMemcpyHostToDevice));

  std::vector<Op> ops;
  for (auto [M, K] : shapes2d) {
    auto add = [&](Op op) {
      if (wanted(o, op.kernel)) ops.push_back(std::move(op));
    };
    add(fp8_op("fp8_tensorwise", Fp8Scaling::kTensorwise, M, K, false, sc));
    add(fp8_op("fp8_tensorwise_static", Fp8Scaling::kTensorwise, M, K, true, sc));
    add(fp8_op("fp8_rowwise", Fp8Scaling::kRowwise, M, K, false, sc));
    add(fp8_op("fp8_colwise", Fp8Scaling::kColwise, M, K, false, sc));
    add(fp8_op("fp8_colwise_t", Fp8Scaling::kColwise, M, K, false, sc, true));
    add(fp8_op("fp8_1x128", Fp8Scaling::kBlock1x128, M, K, false, sc));
    add(fp8_op("fp8_128x128", Fp8Scaling::kBlock128x128, M, K, false, sc));
    for (E8M0Rounding r : {E8M0Rounding::kFloor, E8M0Rounding::kRceil}) {
      add(mxfp8_op("mxfp8_rowwise", 1, M, K, true, false, r, ScaleLayout::kLinear, false));
      add(mxfp8_op("mxfp8_colwise", 1, M, K, false, true, r, ScaleLayout::kLinear, false));
      add(mxfp8_op("mxfp8_both", 1, M, K, true, true, r, ScaleLayout::kLinear, false));
    }
    add(mxfp8_op("mxfp8_both", 1, M, K, true, true, E8M0Rounding::kRceil, ScaleLayout::kSwizzled128x4, false));
    add(nvfp4_op("nvfp4_1x16", M, K, Nvfp4Block::k1x16, true, sc));
    add(nvfp4_op("nvfp4_1x16_amax", M, K, Nvfp4Block::k1x16, false, sc));
    add(nvfp4_op("nvfp4_16x16", M, K, Nvfp4Block::k16x16, true, sc));
    add(dequant_op("fp8_rowwise_dequant", M, K));
    add(dequant_op("mxfp8_rowwise_dequant", M, K));
    add(dequant_op("nvfp4_dequant", M, K));
  }
  if (wanted(o, "mxfp8_colwise_3d")) {
    for (auto [N, K] : nk3d)
      for (int64_t E : experts) {
        for (E8M0Rounding r : {E8M0Rounding::kFloor, E8M0Rounding::kRceil})
          ops.push_back(mxfp8_op("mxfp8_colwise_3d", E, N, K, false, true, r, ScaleLayout::kLinear, true));
        ops.push_back(mxfp8_op("mxfp8_colwise_3d", E, N, K, false, true, E8M0Rounding::kRceil,
                               ScaleLayout::kSwizzled128x4, true));
      }
  }
  if (ops.empty()) {
    std::fprintf(stderr, "quantize: no kernel selected (see --help)\n");
    return 2;
  }

  // ---- buffers: rotate among `nrot` sets covering >= 4x L2 ------------------------------------------------------
  const double rot_target = 4.0 * static_cast<double>(prop.l2CacheSize);
  auto nrot_of = [&](const Op& op) {
    const double per = static_cast<double>(op.in_bytes + op.out_bytes);
    return static_cast<int>(std::clamp(std::ceil(rot_target / per), 1.0, 16.0));
  };
  size_t in_pool = 0, out_pool = 0;
  for (const Op& op : ops) {
    in_pool = std::max(in_pool, op.in_bytes * nrot_of(op));
    out_pool = std::max(out_pool, op.out_bytes * nrot_of(op));
  }
  uint8_t *d_in = nullptr, *d_out = nullptr;
  BENCH_CUDA(cudaMalloc(&d_in, in_pool));
  BENCH_CUDA(cudaMalloc(&d_out, out_pool));
  std::printf("# buffers: %.2f GB input pool, %.2f GB output pool\n", in_pool / 1e9, out_pool / 1e9);
  fill_random_bf16<<<prop.multiProcessorCount * 8, 256>>>(reinterpret_cast<uint16_t*>(d_in), in_pool / 2, 12345);
  BENCH_CUDA(cudaGetLastError());
  BENCH_CUDA(cudaMemset(d_out, 0, out_pool));
  BENCH_CUDA(cudaDeviceSynchronize());
  cudaStream_t st;
  BENCH_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  std::vector<std::string> probe_records;
  if (o.probe || o.once) {
    const size_t pbytes = std::min<size_t>(size_t(1) << 30, std::min(in_pool, out_pool)) / 8192 * 8192;
    for (const ProbeResult& r : run_memory_probe(d_in, d_out, pbytes, o.once)) {
      if (!o.once) std::printf("# probe %-22s %9.2f us %7.0f GB/s (read + write)\n", r.name.c_str(), r.us, r.GBps);
      JsonObject j;
      j.add("probe", r.name).add("bytes", pbytes).add("us", r.us).add("GBps", r.GBps);
      probe_records.push_back(j.str());
    }
    std::fflush(stdout);
  }
  if (o.once) {
    for (const Op& op : ops) op.launch(d_in, d_out, st);
    BENCH_CUDA(cudaStreamSynchronize(st));
    std::printf("# --once: launched %zu cases once\n", ops.size());
    return 0;
  }

  std::printf("%-22s %-20s %-6s %-8s %10s %10s %9s %7s %9s %s\n", "kernel", "shape", "mode", "layout", "us_eager",
              "us_graph", "GB/s", "ratio", "copy~size", "ok");
  std::vector<std::string> records;
  int failures = 0;
  for (const Op& op : ops) {
    const int nrot = nrot_of(op);
    std::string shape;
    for (size_t i = 0; i < op.shape.size(); ++i) shape += (i ? "x" : "") + std::to_string(op.shape[i]);
    int slot = 0;
    auto fn = [&] {
      const int s = slot++ % nrot;
      op.launch(d_in + s * op.in_bytes, d_out + s * op.out_bytes, st);
    };
    double us = NAN, usg = NAN;
    std::string error;
    try {
      const double est_us = op.logical_bytes / (0.8 * copy_GBps * 1e3);
      const int iters = static_cast<int>(std::clamp(1000.0 / std::max(est_us, 1.0), 1.0, 100.0));
      us = time_eager_us(st, fn, iters, 5, 2);
      usg = time_graph_us(st, fn, iters, 5);
    } catch (const std::exception& e) {
      error = e.what();
    }
    // Reference point for small tensors: a device-to-device copy of comparable size (same buffers, same rotation),
    // which pays the same launch / ramp-up / tail costs as a quantize kernel of that size.
    const size_t copy_bytes =
        std::min<size_t>({static_cast<size_t>(op.logical_bytes / 2), op.out_bytes, op.in_bytes}) / 256 * 256;
    double copy_small_GBps = NAN;
    if (error.empty() && copy_bytes > 0) {
      int cslot = 0;
      auto cfn = [&] {
        const int s = cslot++ % nrot;
        BENCH_CUDA(cudaMemcpyAsync(d_out + s * op.out_bytes, d_in + s * op.in_bytes, copy_bytes,
                                   cudaMemcpyDeviceToDevice, st));
      };
      const double est = 2.0 * copy_bytes / (0.8 * copy_GBps * 1e3);
      const int citers = static_cast<int>(std::clamp(1000.0 / std::max(est, 1.0), 1.0, 100.0));
      copy_small_GBps = 2.0 * copy_bytes / (time_graph_us(st, cfn, citers, 5) * 1e3);
    }
    std::string correct = "null";
    if (o.check && error.empty()) {
      try {
        op.launch(d_in, d_out, st);
        BENCH_CUDA(cudaStreamSynchronize(st));
        correct = op.check(d_in, d_out) ? "true" : "false";
      } catch (const std::exception& e) {
        correct = "false";
        error = e.what();
      }
    }
    if (correct == "false" || !error.empty()) ++failures;
    const double t = std::isfinite(usg) ? usg : us;  // the time GB/s and ratio use: graph (eager if it failed)
    const double gbps = op.logical_bytes / (t * 1e3);
    const double gbps_eager = op.logical_bytes / (us * 1e3);
    std::printf("%-22s %-20s %-6s %-8s %10.2f %10.2f %9.0f %6.1f%% %9.0f %s%s\n", op.kernel.c_str(), shape.c_str(),
                op.scale_mode.c_str(), op.scale_layout.c_str(), us, usg, gbps, 100.0 * gbps / copy_GBps, copy_small_GBps,
                correct == "null" ? "-" : correct.c_str(), error.empty() ? "" : ("  ERROR: " + error).c_str());
    std::fflush(stdout);
    JsonObject j;
    j.add("suite", "quantize").add("kernel", op.kernel).add("dtype_in", op.dtype_in).add("shape", op.shape);
    j.add("scale_mode", op.scale_mode).add("scale_layout", op.scale_layout).add("format", "e4m3");
    j.add("us", t).add("us_graph", usg).add("us_eager", us).add("GBps", gbps).add("GBps_eager", gbps_eager);
    j.add("copy_GBps", copy_GBps).add("ratio", gbps / copy_GBps).add("logical_bytes", op.logical_bytes);
    j.add("copy_same_size_GBps", copy_small_GBps).add("copy_same_size_bytes", 2 * copy_bytes);
    j.add("buffer_sets", nrot).add_raw("correct", correct);
    if (!error.empty()) j.add("error", error);
    records.push_back(j.str());
  }
  const double copy_after = measure_copy_GBps();
  std::printf("# device-to-device copy after the run: %.0f GB/s\n", copy_after);

  JsonObject top;
  top.add("device", std::string(prop.name)).add("command", command).add("copy_GBps", copy_GBps);
  top.add("copy_GBps_after", copy_after);
  top.add("bandwidth_basis",
          "logical bytes (input read once + outputs written once) / us (= us_graph; us_eager where graph timing failed)");
  top.add_raw("probe", json_array(probe_records));
  top.add_raw("results", json_array(records));
  if (write_file(o.json_path, top.str() + "\n")) std::printf("# wrote %s\n", o.json_path.c_str());
  std::printf("# reproduce: %s\n", command.c_str());
  cudaStreamDestroy(st);
  cudaFree(d_in);
  cudaFree(d_out);
  cudaFree(sc.given_amax);
  return failures ? 1 : 0;
}

TPCOMM_BENCH_SUITE("quantize", 20, "quantization kernels vs D2D copy bandwidth", run_quantize_suite);

}  // namespace tpcomm::bench
