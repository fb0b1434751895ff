// Async-TP ops on a loopback world (W ranks as threads of this process on one GPU): every engine and transport against
// a float64 CPU reference of the same (decoded, dequantized) inputs, bitwise equality across ranks and across runs,
// 3-D gather/scatter dims, several Bs, both B layouts, FP8 tensorwise / rowwise (sharded and replicated) / blockwise,
// graph capture + replay with new inputs, fail-fast errors, bad input leaving outputs untouched, a missing rank ->
// kTimeout naming it, and 1,000 back-to-back calls.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "async_tp/async_tp_ref.h"
#include "common/test_util.h"
#include "tpcomm/async_tp.h"
#include "tpcomm/communicator.h"
#include "tpcomm/error.h"
#include "tpcomm/quantize.h"

namespace tpcomm {
namespace {

using test::RefScale;

#define CK(x) ASSERT_EQ((x), cudaSuccess) << #x

struct DevBuf {
  void* p = nullptr;
  std::size_t bytes = 0;
  explicit DevBuf(std::size_t b = 0) : bytes(b) {
    if (b && cudaMalloc(&p, b) != cudaSuccess) p = nullptr;
  }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  DevBuf(DevBuf&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    std::swap(p, o.p);
    std::swap(bytes, o.bytes);
    return *this;
  }
  template <typename T>
  void upload(const std::vector<T>& v) {
    ASSERT_EQ(test::copy_to_device(p, v.data(), v.size() * sizeof(T)), 0);
  }
  std::vector<uint8_t> download() const {
    std::vector<uint8_t> h(bytes);
    cudaMemcpy(h.data(), p, bytes, cudaMemcpyDeviceToHost);
    return h;
  }
  void poison() { cudaMemset(p, 0xFF, bytes); }  // bf16/f16/f32 NaN patterns
};

struct World {
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<cudaStream_t> streams;
  explicit World(int W, double timeout_s = 10.0) {
    CommOptions o;
    o.timeout_s = timeout_s;
    comms = Communicator::create_loopback(W, 0, o);
    streams.resize(W);
    for (auto& s : streams) cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  }
  ~World() {
    for (auto& s : streams) cudaStreamSynchronize(s);
    comms.clear();
    for (auto& s : streams) cudaStreamDestroy(s);
  }
  int size() const { return static_cast<int>(comms.size()); }
  // Runs f(rank) on W threads; rethrows the first exception.
  void run(const std::function<void(int)>& f) {
    const int W = size();
    std::vector<std::exception_ptr> errs(W);
    std::vector<std::thread> th;
    for (int r = 0; r < W; ++r)
      th.emplace_back([&, r] {
        try {
          cudaSetDevice(0);
          f(r);
        } catch (...) {
          errs[r] = std::current_exception();
        }
      });
    for (auto& t : th) t.join();
    for (auto& e : errs)
      if (e) std::rethrow_exception(e);
  }
  void sync_all() {
    run([&](int r) { comms[r]->synchronize(streams[r]); });
  }
};

bool has_gpu() { return test::cuda_device_count() > 0; }

// Random element codes of `dtype`: bf16/f16/f32 uniform in [-1, 1); e4m3 with exponents 2^-3..2^2 (no NaN).
std::vector<uint8_t> random_codes(test::SplitMix64& rng, DType dtype, std::size_t n) {
  const std::size_t es = dtype_size(dtype);
  std::vector<uint8_t> v(n * es);
  for (std::size_t i = 0; i < n; ++i) {
    if (dtype == DType::kFloat8E4M3) {
      const uint64_t x = rng.next();
      const uint8_t sign = (x & 1) << 7, e = static_cast<uint8_t>(4 + (x >> 1) % 6), m = static_cast<uint8_t>((x >> 8) & 7);
      v[i] = sign | static_cast<uint8_t>(e << 3) | m;
    } else {
      test::encode_element(v.data(), i, dtype, rng.uniform(-1.0, 1.0));
    }
  }
  return v;
}

std::vector<float> random_scales(test::SplitMix64& rng, std::size_t n) {
  std::vector<float> s(n);
  for (auto& x : s) x = static_cast<float>(rng.uniform(0.5, 1.5));
  return s;
}

enum class Fp8Mode { kNone, kTensor, kRowSharded, kRowReplicated, kBlockSharded, kBlockReplicated };

struct AgCase {
  int world = 2;
  std::vector<int64_t> shard;  // A shard sizes (last = K)
  int gather_dim = 0;
  std::vector<int64_t> Ns = {128};
  bool b_col_major = true;
  AsyncTpEngine engine = AsyncTpEngine::kDecomposed;
  AsyncTpTransport transport = AsyncTpTransport::kCopyEngine;
  bool return_a = true;
  DType dtype = DType::kBFloat16;
  Fp8Mode fp8 = Fp8Mode::kNone;
  bool bias = false;
};

std::string describe(const AgCase& c) {
  std::string s = "W=" + std::to_string(c.world) + " shard=(";
  for (auto x : c.shard) s += std::to_string(x) + ",";
  s += ") gather_dim=" + std::to_string(c.gather_dim) + " engine=" + async_tp_engine_name(c.engine) +
       " transport=" + async_tp_transport_name(c.transport) + " dtype=" + dtype_name(c.dtype) +
       " fp8mode=" + std::to_string(static_cast<int>(c.fp8)) + " nB=" + std::to_string(c.Ns.size()) +
       (c.b_col_major ? " B=(N,K)" : " B=(K,N)");
  return s;
}

TensorView view(const void* p, DType t, const std::vector<int64_t>& sizes) {
  TensorView v;
  v.data = const_cast<void*>(p);
  v.dtype = t;
  v.ndim = static_cast<int>(sizes.size());
  int64_t st = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.sizes[d] = sizes[d];
    v.strides[d] = st;
    st *= sizes[d];
  }
  return v;
}

int64_t prod(const std::vector<int64_t>& s, int from, int to) {
  int64_t p = 1;
  for (int d = from; d < to; ++d) p *= s[d];
  return p;
}

// Runs one AG case on a fresh world, checks every rank's outputs against float64, bitwise across ranks.
void run_ag_case_body(const AgCase& c, int repeats) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  test::SplitMix64 rng(seed);
  World w(c.world);
  const int W = c.world;
  const int nd = static_cast<int>(c.shard.size());
  const int64_t K = c.shard.back();
  const int64_t outer = prod(c.shard, 0, c.gather_dim), inner = prod(c.shard, c.gather_dim, nd - 1);
  const int64_t rows = outer * inner;  // per shard
  std::vector<int64_t> gathered = c.shard;
  gathered[c.gather_dim] *= W;
  const bool fp8 = c.dtype == DType::kFloat8E4M3;
  const DType out_t = DType::kBFloat16;
  const int nb = static_cast<int>(c.Ns.size());
  const int64_t kb = (K + 127) / 128;

  // Inputs (host), shared B for all ranks so outputs can be compared across ranks bit for bit.
  std::vector<std::vector<uint8_t>> a_codes(W);
  std::vector<std::vector<float>> a_scales(W);  // sharded scales per rank (rowwise: rows; blockwise: kb x rows M-major)
  for (int r = 0; r < W; ++r) a_codes[r] = random_codes(rng, c.dtype, static_cast<std::size_t>(rows * K));
  std::vector<float> a_scale_full;  // replicated modes / tensorwise
  if (c.fp8 == Fp8Mode::kTensor) a_scale_full = random_scales(rng, 1);
  if (c.fp8 == Fp8Mode::kRowSharded)
    for (int r = 0; r < W; ++r) a_scales[r] = random_scales(rng, rows);
  if (c.fp8 == Fp8Mode::kBlockSharded)
    for (int r = 0; r < W; ++r) a_scales[r] = random_scales(rng, rows * kb);
  if (c.fp8 == Fp8Mode::kRowReplicated) a_scale_full = random_scales(rng, rows * W);
  if (c.fp8 == Fp8Mode::kBlockReplicated) a_scale_full = random_scales(rng, rows * W * kb);
  std::vector<std::vector<uint8_t>> b_codes(nb), bias(nb);
  std::vector<std::vector<float>> b_scales(nb);
  for (int i = 0; i < nb; ++i) {
    b_codes[i] = random_codes(rng, c.dtype, static_cast<std::size_t>(K * c.Ns[i]));
    if (c.fp8 == Fp8Mode::kTensor) b_scales[i] = random_scales(rng, 1);
    if (c.fp8 == Fp8Mode::kRowSharded || c.fp8 == Fp8Mode::kRowReplicated) b_scales[i] = random_scales(rng, c.Ns[i]);
    if (c.fp8 == Fp8Mode::kBlockSharded || c.fp8 == Fp8Mode::kBlockReplicated)
      b_scales[i] = random_scales(rng, static_cast<std::size_t>(kb * ((c.Ns[i] + 127) / 128)));
    if (c.bias) bias[i] = random_codes(rng, out_t, c.Ns[i]);
  }

  // Reference: the gathered A in gathered-row order (outer, W, inner) @ B_i.
  std::vector<double> a_gath(static_cast<std::size_t>(rows * W * K));
  for (int r = 0; r < W; ++r) {
    RefScale mode = RefScale::kNone;
    std::vector<float> sc;
    int64_t ld = rows;
    switch (c.fp8) {
      case Fp8Mode::kTensor: mode = RefScale::kTensor; sc = a_scale_full; break;
      case Fp8Mode::kRowSharded: mode = RefScale::kRow; sc = a_scales[r]; break;
      case Fp8Mode::kBlockSharded: mode = RefScale::kBlock; sc = a_scales[r]; break;
      case Fp8Mode::kRowReplicated:
        mode = RefScale::kRow;
        sc.assign(a_scale_full.begin() + r * rows, a_scale_full.begin() + (r + 1) * rows);
        break;
      case Fp8Mode::kBlockReplicated:
        mode = RefScale::kBlock;
        sc.resize(rows * kb);
        for (int64_t j = 0; j < kb; ++j)
          for (int64_t i = 0; i < rows; ++i) sc[j * rows + i] = a_scale_full[j * rows * W + r * rows + i];
        break;
      default: break;
    }
    const std::vector<double> deq = test::ref_dequant_a(a_codes[r], c.dtype, rows, K, mode, sc, ld);
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i)
        std::memcpy(&a_gath[((o * W + r) * inner + i) * K], &deq[(o * inner + i) * K], sizeof(double) * K);
  }
  std::vector<std::vector<double>> ref(nb);
  for (int i = 0; i < nb; ++i) {
    RefScale bm = c.fp8 == Fp8Mode::kTensor ? RefScale::kTensor
                  : (c.fp8 == Fp8Mode::kRowSharded || c.fp8 == Fp8Mode::kRowReplicated) ? RefScale::kRow
                  : (c.fp8 == Fp8Mode::kBlockSharded || c.fp8 == Fp8Mode::kBlockReplicated) ? RefScale::kBlock
                                                                                              : RefScale::kNone;
    const std::vector<double> bd = test::ref_dequant_b(b_codes[i], c.dtype, K, c.Ns[i], c.b_col_major, bm, b_scales[i], kb);
    ref[i] = test::ref_matmul(a_gath, bd, rows * W, K, c.Ns[i]);
    if (c.bias)
      for (int64_t m = 0; m < rows * W; ++m)
        for (int64_t n = 0; n < c.Ns[i]; ++n) ref[i][m * c.Ns[i] + n] += test::decode_element(bias[i].data(), n, out_t);
  }

  // Device buffers per rank.
  struct RankBufs {
    DevBuf a, a_scale, a_gathered;
    std::vector<DevBuf> b, b_scale, out, bias;
  };
  std::vector<RankBufs> rb(W);
  const std::size_t es = dtype_size(c.dtype);
  for (int r = 0; r < W; ++r) {
    RankBufs& x = rb[r];
    x.a = DevBuf(a_codes[r].size());
    x.a.upload(a_codes[r]);
    if (c.fp8 == Fp8Mode::kRowSharded || c.fp8 == Fp8Mode::kBlockSharded) {
      x.a_scale = DevBuf(a_scales[r].size() * 4);
      x.a_scale.upload(a_scales[r]);
    } else if (c.fp8 != Fp8Mode::kNone) {
      x.a_scale = DevBuf(a_scale_full.size() * 4);
      x.a_scale.upload(a_scale_full);
    }
    x.a_gathered = DevBuf(static_cast<std::size_t>(rows * W * K) * es);
    for (int i = 0; i < nb; ++i) {
      x.b.emplace_back(b_codes[i].size());
      x.b.back().upload(b_codes[i]);
      x.b_scale.emplace_back(b_scales[i].size() * 4);
      if (!b_scales[i].empty()) x.b_scale.back().upload(b_scales[i]);
      x.out.emplace_back(static_cast<std::size_t>(rows * W * c.Ns[i]) * 2);
      x.bias.emplace_back(bias[i].size());
      if (c.bias) x.bias.back().upload(bias[i]);
    }
  }
  auto make_args = [&](int r) {
    AllGatherMatmulArgs a;
    a.a_shard = view(rb[r].a.p, c.dtype, c.shard);
    a.gather_dim = c.gather_dim;
    a.num_b = nb;
    for (int i = 0; i < nb; ++i) {
      a.b[i] = c.b_col_major ? TensorView::weight_t(rb[r].b[i].p, c.dtype, K, c.Ns[i])
                             : TensorView::contiguous(rb[r].b[i].p, c.dtype, {K, c.Ns[i]});
      std::vector<int64_t> os = gathered;
      os.back() = c.Ns[i];
      a.out[i] = view(rb[r].out[i].p, out_t, os);
      if (c.bias) a.bias[i] = TensorView::contiguous(rb[r].bias[i].p, out_t, {c.Ns[i]});
      if (c.fp8 == Fp8Mode::kTensor) a.b_scale[i] = TensorView::contiguous(rb[r].b_scale[i].p, DType::kFloat32, {1});
      if (c.fp8 == Fp8Mode::kRowSharded || c.fp8 == Fp8Mode::kRowReplicated)
        a.b_scale[i] = TensorView::contiguous(rb[r].b_scale[i].p, DType::kFloat32, {1, c.Ns[i]});
      if (c.fp8 == Fp8Mode::kBlockSharded || c.fp8 == Fp8Mode::kBlockReplicated) {
        const int64_t nbk = (c.Ns[i] + 127) / 128;
        TensorView s = TensorView::contiguous(rb[r].b_scale[i].p, DType::kFloat32, {kb, nbk});
        s.strides[0] = 1;
        s.strides[1] = kb;
        a.b_scale[i] = s;
      }
    }
    if (c.return_a) a.a_gathered = view(rb[r].a_gathered.p, c.dtype, gathered);
    std::vector<int64_t> lead(c.shard.begin(), c.shard.end() - 1);
    std::vector<int64_t> glead(gathered.begin(), gathered.end() - 1);
    switch (c.fp8) {
      case Fp8Mode::kTensor: a.a_scale = TensorView::contiguous(rb[r].a_scale.p, DType::kFloat32, {1}); break;
      case Fp8Mode::kRowSharded: lead.push_back(1); a.a_scale = view(rb[r].a_scale.p, DType::kFloat32, lead); break;
      case Fp8Mode::kRowReplicated: glead.push_back(1); a.a_scale = view(rb[r].a_scale.p, DType::kFloat32, glead); break;
      case Fp8Mode::kBlockSharded:
      case Fp8Mode::kBlockReplicated: {
        const int64_t rr = c.fp8 == Fp8Mode::kBlockSharded ? rows : rows * W;
        TensorView s = TensorView::contiguous(rb[r].a_scale.p, DType::kFloat32, {rr, kb});
        s.strides[0] = 1;
        s.strides[1] = rr;
        a.a_scale = s;
        break;
      }
      default: break;
    }
    a.options.engine = c.engine;
    a.options.transport = c.transport;
    return a;
  };

  std::vector<std::vector<std::vector<uint8_t>>> first(W);
  for (int rep = 0; rep < repeats; ++rep) {
    for (int r = 0; r < W; ++r)
      for (int i = 0; i < nb; ++i) rb[r].out[i].poison();
    for (int r = 0; r < W; ++r) rb[r].a_gathered.poison();
    cudaDeviceSynchronize();
    std::vector<AsyncTpEngine> ran(W);
    w.run([&](int r) { ran[r] = all_gather_matmul(*w.comms[r], make_args(r), w.streams[r]); });
    w.sync_all();
    for (int r = 0; r < W; ++r) ASSERT_EQ(ran[r], c.engine) << "rank " << r;
    for (int r = 0; r < W; ++r) {
      for (int i = 0; i < nb; ++i) {
        const std::vector<uint8_t> h = rb[r].out[i].download();
        const double err = test::rel_error(h.data(), out_t, ref[i]);
        // bf16 output rounding (2^-9 relative) plus fp32 accumulation: well under 1e-2.
        EXPECT_LT(err, 8e-3) << "rank " << r << " out[" << i << "] rep " << rep;
        if (rep == 0) first[r].push_back(h);
        else EXPECT_TRUE(h == first[r][i]) << "rank " << r << " out[" << i << "] differs between runs";
        if (r > 0) EXPECT_TRUE(h == first[0][i]) << "rank " << r << " out[" << i << "] differs from rank 0's";
      }
      if (c.return_a) {
        const std::vector<uint8_t> g = rb[r].a_gathered.download();
        bool ok = true;
        const std::size_t row = static_cast<std::size_t>(inner * K) * es;
        for (int p = 0; p < W && ok; ++p)
          for (int64_t o = 0; o < outer && ok; ++o)
            ok = std::memcmp(g.data() + (o * W + p) * row, a_codes[p].data() + o * row, row) == 0;
        EXPECT_TRUE(ok) << "rank " << r << ": a_gathered is not the concatenation of the shards";
      }
    }
  }
  for (int r = 0; r < W; ++r) EXPECT_GE(w.comms[r]->stats().async_tp_fused_calls, static_cast<uint64_t>(repeats));
}

// An exception (a device error surfacing in synchronize, a host error) fails the case with its description.
void run_ag_case(const AgCase& c, int repeats = 2) {
  SCOPED_TRACE(describe(c));
  try {
    run_ag_case_body(c, repeats);
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
}

struct RsCase {
  int world = 2;
  std::vector<int64_t> a;  // A sizes (last = k)
  int64_t N = 128;
  int scatter_dim = 0;
  RsReduce reduce = RsReduce::kSum;
  bool b_col_major = true;
  AsyncTpTransport transport = AsyncTpTransport::kCopyEngine;
  DType dtype = DType::kBFloat16;
  DType out = DType::kBFloat16;
  Fp8Mode fp8 = Fp8Mode::kNone;  // kTensor, kRowSharded (= rowwise A / per-column B), kBlockSharded
  bool bias = false;
};

void run_rs_case_body(const RsCase& c, int repeats);
void run_rs_case(const RsCase& c, int repeats = 2) {
  SCOPED_TRACE("RS W=" + std::to_string(c.world) + " scatter_dim=" + std::to_string(c.scatter_dim) + " dtype=" +
               dtype_name(c.dtype) + " fp8mode=" + std::to_string(static_cast<int>(c.fp8)) + " transport=" +
               async_tp_transport_name(c.transport));
  try {
    run_rs_case_body(c, repeats);
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
}

void run_rs_case_body(const RsCase& c, int repeats) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  test::SplitMix64 rng(seed);
  World w(c.world);
  const int W = c.world;
  const int nd = static_cast<int>(c.a.size());
  const int64_t k = c.a.back(), M = prod(c.a, 0, nd - 1), N = c.N, kb = (k + 127) / 128;
  std::vector<int64_t> full = c.a;
  full.back() = N;
  std::vector<int64_t> outs = full;
  outs[c.scatter_dim] /= W;
  std::vector<std::vector<uint8_t>> a(W), b(W);
  std::vector<std::vector<float>> as(W), bs(W);
  std::vector<uint8_t> bias;
  if (c.bias) bias = random_codes(rng, c.out, N);
  std::vector<double> sum(static_cast<std::size_t>(M * N), 0.0);
  for (int r = 0; r < W; ++r) {
    a[r] = random_codes(rng, c.dtype, static_cast<std::size_t>(M * k));
    b[r] = random_codes(rng, c.dtype, static_cast<std::size_t>(k * N));
    RefScale am = RefScale::kNone, bm = RefScale::kNone;
    if (c.fp8 == Fp8Mode::kTensor) {
      as[r] = random_scales(rng, 1);
      bs[r] = random_scales(rng, 1);
      am = bm = RefScale::kTensor;
    } else if (c.fp8 == Fp8Mode::kRowSharded) {
      as[r] = random_scales(rng, M);
      bs[r] = random_scales(rng, N);
      am = bm = RefScale::kRow;
    } else if (c.fp8 == Fp8Mode::kBlockSharded) {
      as[r] = random_scales(rng, M * kb);
      bs[r] = random_scales(rng, kb * ((N + 127) / 128));
      am = bm = RefScale::kBlock;
    }
    const auto ad = test::ref_dequant_a(a[r], c.dtype, M, k, am, as[r], M);
    const auto bd = test::ref_dequant_b(b[r], c.dtype, k, N, c.b_col_major, bm, bs[r], kb);
    const auto part = test::ref_matmul(ad, bd, M, k, N);
    for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
  }
  // Expected output of rank r: its slice of `full` along scatter_dim.
  auto expected = [&](int r) {
    std::vector<double> e(static_cast<std::size_t>(M * N / W));
    const int64_t d = c.scatter_dim;
    const int64_t o = prod(full, 0, d), s = full[d], in = prod(full, d + 1, nd);
    const int64_t sl = s / W;
    std::size_t idx = 0;
    for (int64_t i = 0; i < o; ++i)
      for (int64_t j = r * sl; j < (r + 1) * sl; ++j)
        for (int64_t t = 0; t < in; ++t) {
          double v = sum[(i * s + j) * in + t];
          if (c.reduce == RsReduce::kAvg) v /= W;
          if (c.bias) v += test::decode_element(bias.data(), static_cast<std::size_t>(((i * s + j) * in + t) % N), c.out);
          e[idx++] = v;
        }
    return e;
  };
  struct Bufs {
    DevBuf a, b, as, bs, out, bias;
  };
  std::vector<Bufs> x(W);
  for (int r = 0; r < W; ++r) {
    x[r].a = DevBuf(a[r].size());
    x[r].a.upload(a[r]);
    x[r].b = DevBuf(b[r].size());
    x[r].b.upload(b[r]);
    x[r].as = DevBuf(as[r].size() * 4 + 16);
    if (!as[r].empty()) x[r].as.upload(as[r]);
    x[r].bs = DevBuf(bs[r].size() * 4 + 16);
    if (!bs[r].empty()) x[r].bs.upload(bs[r]);
    x[r].out = DevBuf(static_cast<std::size_t>(M * N / W) * dtype_size(c.out));
    x[r].bias = DevBuf(bias.size() + 16);
    if (c.bias) x[r].bias.upload(bias);
  }
  auto make_args = [&](int r) {
    MatmulReduceScatterArgs g;
    g.a = view(x[r].a.p, c.dtype, c.a);
    g.b = c.b_col_major ? TensorView::weight_t(x[r].b.p, c.dtype, k, N) : TensorView::contiguous(x[r].b.p, c.dtype, {k, N});
    g.out = view(x[r].out.p, c.out, outs);
    g.scatter_dim = c.scatter_dim;
    g.reduce = c.reduce;
    if (c.bias) g.bias = TensorView::contiguous(x[r].bias.p, c.out, {N});
    if (c.fp8 == Fp8Mode::kTensor) {
      g.a_scale = TensorView::contiguous(x[r].as.p, DType::kFloat32, {1});
      g.b_scale = TensorView::contiguous(x[r].bs.p, DType::kFloat32, {1});
    } else if (c.fp8 == Fp8Mode::kRowSharded) {
      std::vector<int64_t> lead(c.a.begin(), c.a.end() - 1);
      lead.push_back(1);
      g.a_scale = view(x[r].as.p, DType::kFloat32, lead);
      g.b_scale = TensorView::contiguous(x[r].bs.p, DType::kFloat32, {1, N});
    } else if (c.fp8 == Fp8Mode::kBlockSharded) {
      TensorView s = TensorView::contiguous(x[r].as.p, DType::kFloat32, {M, kb});
      s.strides[0] = 1;
      s.strides[1] = M;
      g.a_scale = s;
      TensorView t = TensorView::contiguous(x[r].bs.p, DType::kFloat32, {kb, (N + 127) / 128});
      t.strides[0] = 1;
      t.strides[1] = kb;
      g.b_scale = t;
    }
    g.options.engine = AsyncTpEngine::kDecomposed;
    g.options.transport = c.transport;
    return g;
  };
  std::vector<std::vector<uint8_t>> first(W);
  for (int rep = 0; rep < repeats; ++rep) {
    for (int r = 0; r < W; ++r) x[r].out.poison();
    cudaDeviceSynchronize();
    w.run([&](int r) { EXPECT_EQ(matmul_reduce_scatter(*w.comms[r], make_args(r), w.streams[r]), AsyncTpEngine::kDecomposed); });
    w.sync_all();
    for (int r = 0; r < W; ++r) {
      const auto h = x[r].out.download();
      const double err = test::rel_error(h.data(), c.out, expected(r));
      EXPECT_LT(err, 8e-3) << "rank " << r << " rep " << rep;
      if (rep == 0) first[r] = h;
      else EXPECT_TRUE(h == first[r]) << "rank " << r << ": output differs between runs (reduction order must be fixed)";
    }
  }
}

class AsyncTpLoopback : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!has_gpu()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(AsyncTpLoopback, AgBf16Decomposed2D) {
  for (int W : {2, 4})
    for (auto t : {AsyncTpTransport::kCopyEngine, AsyncTpTransport::kSm}) {
      AgCase c;
      c.world = W;
      c.shard = {128, 256};
      c.Ns = {192};
      c.transport = t;
      run_ag_case(c);
    }
}

TEST_F(AsyncTpLoopback, AgBf16OddShapesBothLayoutsSeveralB) {
  AgCase c;
  c.world = 3;
  c.shard = {40, 136};
  c.Ns = {72, 24};
  c.b_col_major = false;
  run_ag_case(c);
  c.b_col_major = true;
  c.world = 2;
  c.bias = true;
  run_ag_case(c);
}

TEST_F(AsyncTpLoopback, AgBf16Gather3D) {
  for (int gd : {0, 1}) {
    AgCase c;
    c.world = 2;
    c.shard = {3, 48, 128};
    c.gather_dim = gd;
    c.Ns = {64};
    run_ag_case(c);
    c.world = 4;
    c.transport = AsyncTpTransport::kSm;
    run_ag_case(c);
  }
}

TEST_F(AsyncTpLoopback, AgFp8Decomposed) {
  for (Fp8Mode m : {Fp8Mode::kTensor, Fp8Mode::kRowSharded, Fp8Mode::kRowReplicated, Fp8Mode::kBlockSharded,
                    Fp8Mode::kBlockReplicated}) {
    AgCase c;
    c.world = 2;
    c.shard = {128, 512};  // 128x128 blockwise needs K % 512 == 0 (src/async_tp/plan.cpp)
    c.Ns = {256};
    c.dtype = DType::kFloat8E4M3;
    c.fp8 = m;
    run_ag_case(c);
  }
  AgCase c;  // odd rows: misaligned scale slices are staged
  c.world = 3;
  c.shard = {36, 128};
  c.Ns = {128};
  c.dtype = DType::kFloat8E4M3;
  c.fp8 = Fp8Mode::kRowReplicated;
  run_ag_case(c);
}

// The shape of tests/quantize/quant_gemm_gpu_test.cu (where cuBLASLt's block scaling is verified): K/128 = 4.
TEST_F(AsyncTpLoopback, AgFp8BlockwiseQuantGemmShape) {
  AgCase c;
  c.world = 2;
  c.shard = {128, 512};
  c.Ns = {384};
  c.dtype = DType::kFloat8E4M3;
  c.fp8 = Fp8Mode::kBlockSharded;
  run_ag_case(c);
}

TEST_F(AsyncTpLoopback, AgNative) {
  for (int W : {2, 4})
    for (auto m : {Fp8Mode::kNone, Fp8Mode::kTensor, Fp8Mode::kRowSharded}) {
      AgCase c;
      c.world = W;
      c.shard = {256, 512};
      c.Ns = {384};
      c.engine = AsyncTpEngine::kNative;
      if (m != Fp8Mode::kNone) {
        c.dtype = DType::kFloat8E4M3;
        c.fp8 = m;
      }
      run_ag_case(c);
    }
}

TEST_F(AsyncTpLoopback, RsBf16AllScatterDims) {
  for (int W : {2, 4}) {
    RsCase c;
    c.world = W;
    c.a = {256, 128};
    c.N = 192;
    run_rs_case(c);
    c.transport = AsyncTpTransport::kSm;
    c.reduce = RsReduce::kAvg;
    c.bias = true;
    run_rs_case(c);
  }
  for (int d : {0, 1, 2}) {  // reshape case: 3-D A, the scatter dim of the 3-D output
    RsCase c;
    c.world = 2;
    c.a = {4, 64, 128};
    c.N = 256;
    c.scatter_dim = d;
    run_rs_case(c);
  }
  RsCase c;
  c.world = 2;
  c.a = {128, 64};
  c.N = 64;
  c.b_col_major = false;
  c.out = DType::kFloat32;
  run_rs_case(c);
}

TEST_F(AsyncTpLoopback, RsFp8) {
  for (Fp8Mode m : {Fp8Mode::kTensor, Fp8Mode::kRowSharded, Fp8Mode::kBlockSharded}) {
    for (int d : {0, 1}) {
      RsCase c;
      c.world = 2;
      c.a = {2, 128, 512};
      c.N = 256;
      c.scatter_dim = d;
      c.dtype = DType::kFloat8E4M3;
      c.fp8 = m;
      run_rs_case(c);
    }
  }
}

// Capture each rank's call in a CUDA graph, replay with new inputs.
TEST_F(AsyncTpLoopback, GraphReplayWithNewInputs) {
  const int W = 2;
  World w(W);
  const int64_t m = 64, K = 128, N = 64;
  test::SplitMix64 rng(test::fresh_seed());
  std::vector<DevBuf> a(W), b(W), out(W);
  for (int r = 0; r < W; ++r) {
    a[r] = DevBuf(m * K * 2);
    b[r] = DevBuf(K * N * 2);
    out[r] = DevBuf(m * W * N * 2);
  }
  auto bcodes = random_codes(rng, DType::kBFloat16, K * N);
  for (int r = 0; r < W; ++r) b[r].upload(bcodes);
  auto args = [&](int r) {
    AllGatherMatmulArgs g;
    g.a_shard = TensorView::contiguous(a[r].p, DType::kBFloat16, {m, K});
    g.b[0] = TensorView::weight_t(b[r].p, DType::kBFloat16, K, N);
    g.out[0] = TensorView::contiguous(out[r].p, DType::kBFloat16, {m * W, N});
    g.options.engine = AsyncTpEngine::kDecomposed;
    return g;
  };
  std::vector<std::vector<uint8_t>> acodes(W);
  for (int r = 0; r < W; ++r) {
    acodes[r] = random_codes(rng, DType::kBFloat16, m * K);
    a[r].upload(acodes[r]);
  }
  w.run([&](int r) { all_gather_matmul(*w.comms[r], args(r), w.streams[r]); });  // eager warm-up sizes the workspace
  w.sync_all();
  std::vector<cudaGraphExec_t> exec(W);
  w.run([&](int r) {
    cudaGraph_t g;
    if (cudaStreamBeginCapture(w.streams[r], cudaStreamCaptureModeThreadLocal) != cudaSuccess) throw std::runtime_error("capture");
    all_gather_matmul(*w.comms[r], args(r), w.streams[r]);
    if (cudaStreamEndCapture(w.streams[r], &g) != cudaSuccess) throw std::runtime_error("end capture");
    if (cudaGraphInstantiate(&exec[r], g, 0) != cudaSuccess) throw std::runtime_error("instantiate");
    cudaGraphDestroy(g);
  });
  for (int rep = 0; rep < 3; ++rep) {
    for (int r = 0; r < W; ++r) {
      acodes[r] = random_codes(rng, DType::kBFloat16, m * K);
      a[r].upload(acodes[r]);
      out[r].poison();
    }
    cudaDeviceSynchronize();
    w.run([&](int r) {
      if (cudaGraphLaunch(exec[r], w.streams[r]) != cudaSuccess) throw std::runtime_error("launch");
    });
    w.sync_all();
    std::vector<double> ag(m * W * K);
    for (int r = 0; r < W; ++r)
      for (int64_t i = 0; i < m * K; ++i) ag[r * m * K + i] = test::decode_element(acodes[r].data(), i, DType::kBFloat16);
    const auto bd = test::ref_dequant_b(bcodes, DType::kBFloat16, K, N, true, RefScale::kNone, {}, 0);
    const auto ref = test::ref_matmul(ag, bd, m * W, K, N);
    for (int r = 0; r < W; ++r) {
      const auto h = out[r].download();
      EXPECT_LT(test::rel_error(h.data(), DType::kBFloat16, ref), 8e-3) << "replay " << rep << " rank " << r;
    }
  }
  for (auto e : exec) cudaGraphExecDestroy(e);
}

TEST_F(AsyncTpLoopback, FailFastAndBadInputLeaveOutputsUntouched) {
  const int W = 2;
  World w(W);
  const int64_t m = 64, K = 128, N = 64;
  std::vector<DevBuf> a(W), b(W), out(W);
  for (int r = 0; r < W; ++r) {
    a[r] = DevBuf(m * K * 2);
    b[r] = DevBuf(K * N * 2);
    out[r] = DevBuf(m * W * N * 2);
    cudaMemset(a[r].p, 0x3C, a[r].bytes);
    cudaMemset(b[r].p, 0x3C, b[r].bytes);
    cudaMemset(out[r].p, 0x5A, out[r].bytes);
  }
  cudaDeviceSynchronize();
  const auto before = out[0].download();
  // The native reduce-scatter is not built: pinning it throws kUnsupported naming the reason.
  MatmulReduceScatterArgs rs;
  rs.a = TensorView::contiguous(a[0].p, DType::kBFloat16, {m * W, K / 2 * 2});
  rs.b = TensorView::weight_t(b[0].p, DType::kBFloat16, K, N);
  rs.out = TensorView::contiguous(out[0].p, DType::kBFloat16, {m, N});
  rs.options.engine = AsyncTpEngine::kNative;
  try {
    matmul_reduce_scatter(*w.comms[0], rs, w.streams[0]);
    ADD_FAILURE() << "native RS did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("native"), std::string::npos) << e.what();
  }
  // Unfused on a loopback world: no NCCL -> kUnsupported, also with allow_fallback.
  AllGatherMatmulArgs ag;
  ag.a_shard = TensorView::contiguous(a[0].p, DType::kBFloat16, {m, K});
  ag.b[0] = TensorView::weight_t(b[0].p, DType::kBFloat16, K, N);
  ag.out[0] = TensorView::contiguous(out[0].p, DType::kBFloat16, {m * W, N});
  ag.options.engine = AsyncTpEngine::kUnfused;
  try {
    all_gather_matmul(*w.comms[0], ag, w.streams[0]);
    ADD_FAILURE() << "unfused on loopback did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
  }
  // Bad inputs, each naming its argument.
  struct Bad {
    const char* arg;
    std::function<void(AllGatherMatmulArgs&)> edit;
  };
  const std::vector<Bad> bads = {
      {"a_shard", [](AllGatherMatmulArgs& g) { g.a_shard.data = nullptr; }},
      {"gather_dim", [](AllGatherMatmulArgs& g) { g.gather_dim = 1; }},
      {"b", [&](AllGatherMatmulArgs& g) { g.b[0].sizes[0] = K + 8; }},
      {"out", [&](AllGatherMatmulArgs& g) { g.out[0].sizes[0] = m; }},
      {"a_shard", [](AllGatherMatmulArgs& g) { g.a_shard.data = static_cast<char*>(g.a_shard.data) + 2; }},
      {"num_b", [](AllGatherMatmulArgs& g) { g.num_b = 5; }},
      {"a_scale", [&](AllGatherMatmulArgs& g) { g.a_scale = TensorView::contiguous(b[0].p, DType::kFloat32, {1}); }},
  };
  for (const Bad& bad : bads) {
    AllGatherMatmulArgs g = ag;
    g.options.engine = AsyncTpEngine::kDecomposed;
    bad.edit(g);
    try {
      all_gather_matmul(*w.comms[0], g, w.streams[0]);
      ADD_FAILURE() << "no error for bad " << bad.arg;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
      EXPECT_EQ(std::string(e.what()).find(std::string("invalid_argument: ") + bad.arg), 0u) << e.what();
    }
  }
  cudaDeviceSynchronize();
  EXPECT_TRUE(out[0].download() == before) << "a rejected call wrote its output";
  EXPECT_EQ(w.comms[0]->stats().async_tp_fused_calls, 0u);
}

TEST_F(AsyncTpLoopback, MissingRankTimesOutNamingIt) {
  const int W = 2;
  World w(W, /*timeout_s=*/1.0);
  const int64_t m = 64, K = 128, N = 64;
  DevBuf a(m * K * 2), b(K * N * 2), out(m * W * N * 2);
  cudaMemset(a.p, 0, a.bytes);
  cudaMemset(b.p, 0, b.bytes);
  AllGatherMatmulArgs g;
  g.a_shard = TensorView::contiguous(a.p, DType::kBFloat16, {m, K});
  g.b[0] = TensorView::weight_t(b.p, DType::kBFloat16, K, N);
  g.out[0] = TensorView::contiguous(out.p, DType::kBFloat16, {m * W, N});
  g.options.engine = AsyncTpEngine::kDecomposed;
  // One call on both ranks (sizes the workspace and, on a loopback world, loads the GEMM in lockstep), then only
  // rank 0 calls.
  std::vector<AllGatherMatmulArgs> both(W, g);
  std::vector<DevBuf> a1(W), b1(W), o1(W);
  for (int r = 1; r < W; ++r) {
    a1[r] = DevBuf(a.bytes);
    b1[r] = DevBuf(b.bytes);
    o1[r] = DevBuf(out.bytes);
    cudaMemset(a1[r].p, 0, a.bytes);
    cudaMemset(b1[r].p, 0, b.bytes);
    both[r].a_shard.data = a1[r].p;
    both[r].b[0].data = b1[r].p;
    both[r].out[0].data = o1[r].p;
  }
  w.run([&](int r) { all_gather_matmul(*w.comms[r], both[r], w.streams[r]); });
  w.sync_all();
  all_gather_matmul(*w.comms[0], g, w.streams[0]);
  try {
    w.comms[0]->synchronize(w.streams[0]);
    ADD_FAILURE() << "no timeout";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout);
    EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
  }
}

TEST_F(AsyncTpLoopback, ThousandBackToBackCalls) {
  const int W = 2;
  World w(W);
  const int64_t m = 32, K = 64, N = 32;
  test::SplitMix64 rng(test::fresh_seed());
  std::vector<DevBuf> a(W), b(W), out(W);
  std::vector<std::vector<uint8_t>> acodes(W);
  const auto bcodes = random_codes(rng, DType::kBFloat16, K * N);
  for (int r = 0; r < W; ++r) {
    a[r] = DevBuf(m * K * 2);
    b[r] = DevBuf(K * N * 2);
    out[r] = DevBuf(m * W * N * 2);
    acodes[r] = random_codes(rng, DType::kBFloat16, m * K);
    a[r].upload(acodes[r]);
    b[r].upload(bcodes);
  }
  w.run([&](int r) {
    for (int i = 0; i < 1000; ++i) {
      AllGatherMatmulArgs g;
      g.a_shard = TensorView::contiguous(a[r].p, DType::kBFloat16, {m, K});
      g.b[0] = TensorView::weight_t(b[r].p, DType::kBFloat16, K, N);
      g.out[0] = TensorView::contiguous(out[r].p, DType::kBFloat16, {m * W, N});
      g.options.engine = AsyncTpEngine::kDecomposed;
      g.options.transport = i % 2 ? AsyncTpTransport::kSm : AsyncTpTransport::kCopyEngine;
      all_gather_matmul(*w.comms[r], g, w.streams[r]);
    }
  });
  w.sync_all();
  std::vector<double> ag(m * W * K);
  for (int r = 0; r < W; ++r)
    for (int64_t i = 0; i < m * K; ++i) ag[r * m * K + i] = test::decode_element(acodes[r].data(), i, DType::kBFloat16);
  const auto ref = test::ref_matmul(ag, test::ref_dequant_b(bcodes, DType::kBFloat16, K, N, true, RefScale::kNone, {}, 0), m * W, K, N);
  for (int r = 0; r < W; ++r) EXPECT_LT(test::rel_error(out[r].download().data(), DType::kBFloat16, ref), 8e-3);
  EXPECT_EQ(w.comms[0]->stats().async_tp_fused_calls, 1000u);
}

}  // namespace
}  // namespace tpcomm
