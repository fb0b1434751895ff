// CPU tests of the async-TP planner: gather/scatter-dim mapping through 3-D/4-D views, scale-mode detection
// (sharded / replicated / tensorwise / blockwise / ambiguous), argument validation naming the argument, engine choice,
// chunk orders.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "async_tp/plan.h"
#include "tpcomm/error.h"

namespace tpcomm::detail {
namespace {

// Fake, 256-byte aligned, never dereferenced device addresses.
void* addr(uintptr_t i) { return reinterpret_cast<void*>(uintptr_t(1) << 40 | (i << 12)); }

TensorView tv(uintptr_t id, DType t, std::initializer_list<int64_t> s) { return TensorView::contiguous(addr(id), t, s); }

void expect_arg_error(const std::function<void()>& f, const std::string& arg) {
  try {
    f();
    ADD_FAILURE() << "no error, expected one naming " << arg;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("invalid_argument: " + arg + ":", 0), 0u) << e.what();
  }
}

AllGatherMatmulArgs ag_bf16(std::initializer_list<int64_t> shard, int gd, int W, int64_t N) {
  AllGatherMatmulArgs a;
  a.a_shard = tv(1, DType::kBFloat16, shard);
  a.gather_dim = gd;
  const int64_t K = a.a_shard.sizes[a.a_shard.ndim - 1];
  a.b[0] = TensorView::weight_t(addr(2), DType::kBFloat16, K, N);
  TensorView o = a.a_shard;
  o.data = addr(3);
  o.sizes[gd] *= W;
  o.sizes[o.ndim - 1] = N;
  int64_t st = 1;
  for (int d = o.ndim - 1; d >= 0; --d) {
    o.strides[d] = st;
    st *= o.sizes[d];
  }
  a.out[0] = o;
  return a;
}

TEST(AsyncTpPlan, AgGeometryThrough3DAnd4D) {
  const AgPlan p0 = plan_all_gather_matmul(ag_bf16({4, 16, 64}, 0, 2, 32), 2);
  EXPECT_EQ(p0.outer, 1);
  EXPECT_EQ(p0.inner, 64);
  const AgPlan p1 = plan_all_gather_matmul(ag_bf16({4, 16, 64}, 1, 2, 32), 2);
  EXPECT_EQ(p1.outer, 4);
  EXPECT_EQ(p1.inner, 16);
  EXPECT_EQ(p1.shard_rows, 64);
  const AgPlan p2 = plan_all_gather_matmul(ag_bf16({2, 3, 8, 64}, 2, 4, 32), 4);
  EXPECT_EQ(p2.outer, 6);
  EXPECT_EQ(p2.inner, 8);
  EXPECT_EQ(p2.shard_bytes, static_cast<std::size_t>(2 * 3 * 8 * 64 * 2));
  expect_arg_error([] { plan_all_gather_matmul(ag_bf16({4, 16, 64}, 2, 2, 32), 2); }, "gather_dim");
  expect_arg_error([] { plan_all_gather_matmul(ag_bf16({4, 16, 64}, -1, 2, 32), 2); }, "gather_dim");
}

TEST(AsyncTpPlan, AgValidationNamesTheArgument) {
  auto ok = ag_bf16({64, 128}, 0, 2, 64);
  EXPECT_NO_THROW(plan_all_gather_matmul(ok, 2));
  auto a = ok;
  a.out[0].sizes[0] = 64;  // not gathered
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "out");
  a = ok;
  a.b[0].sizes[0] = 96;
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "b");
  a = ok;
  a.b[0].dtype = DType::kFloat16;
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "b");
  a = ok;
  a.a_shard.strides[0] = 256;  // not contiguous
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "a_shard");
  a = ok;
  a.a_shard = tv(1, DType::kBFloat16, {64, 60});  // 120-byte rows
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "a_shard");
  a = ok;
  a.num_b = 2;  // b[1] missing
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "b[1]");
  a = ok;
  a.a_gathered = tv(9, DType::kBFloat16, {64, 128});
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "a_gathered");
  a = ok;
  a.a_gathered = tv(9, DType::kBFloat16, {128, 128});
  EXPECT_TRUE(plan_all_gather_matmul(a, 2).return_a);
  a = ok;
  a.bias[0] = tv(10, DType::kBFloat16, {32});
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "bias");
  a = ok;
  a.b[0].strides[0] = 2;  // no unit stride
  a.b[0].strides[1] = 256;
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "b");
}

TEST(AsyncTpPlan, BLayouts) {
  const BLayout t = check_b(TensorView::weight_t(addr(1), DType::kBFloat16, 128, 64), 128, "b");
  EXPECT_TRUE(t.col_major);
  EXPECT_EQ(t.ld, 128);
  const BLayout r = check_b(tv(1, DType::kBFloat16, {128, 64}), 128, "b");
  EXPECT_FALSE(r.col_major);
  EXPECT_EQ(r.ld, 64);
}

TEST(AsyncTpPlan, AgScaleModeDetection) {
  const TensorView a = tv(1, DType::kFloat8E4M3, {4, 32, 256});  // shard, gather dim 1 -> gathered (4, 64, 256) at W=2
  EXPECT_EQ(detect_ag_a_scale(TensorView{}, a, 1, 2, 256), ScaleMode::kNone);
  EXPECT_EQ(detect_ag_a_scale(tv(2, DType::kFloat32, {1}), a, 1, 2, 256), ScaleMode::kTensorwise);
  EXPECT_EQ(detect_ag_a_scale(tv(2, DType::kFloat32, {1, 1, 1}), a, 1, 2, 256), ScaleMode::kTensorwise);
  EXPECT_EQ(detect_ag_a_scale(tv(2, DType::kFloat32, {4, 32, 1}), a, 1, 2, 256), ScaleMode::kRowwiseSharded);
  EXPECT_EQ(detect_ag_a_scale(tv(2, DType::kFloat32, {4, 64, 1}), a, 1, 2, 256), ScaleMode::kRowwiseReplicated);
  // Ambiguous (W = 1: shard == gathered): sharded, as PyTorch does.
  EXPECT_EQ(detect_ag_a_scale(tv(2, DType::kFloat32, {4, 32, 1}), a, 1, 1, 256), ScaleMode::kRowwiseSharded);
  expect_arg_error([&] { detect_ag_a_scale(tv(2, DType::kFloat32, {4, 48, 1}), a, 1, 2, 256); }, "a_scale");
  expect_arg_error([&] { detect_ag_a_scale(tv(2, DType::kBFloat16, {1}), a, 1, 2, 256); }, "a_scale");
  // Blockwise 1x128 (M-major (rows, K/128) with strides (1, rows)), 2-D A gathered along dim 0.
  const TensorView a2 = tv(1, DType::kFloat8E4M3, {64, 256});
  TensorView bs = tv(2, DType::kFloat32, {64, 2});
  bs.strides[0] = 1;
  bs.strides[1] = 64;
  EXPECT_EQ(detect_ag_a_scale(bs, a2, 0, 2, 256), ScaleMode::kBlockwiseSharded);
  TensorView br = bs;
  br.sizes[0] = 128;
  br.strides[1] = 128;
  EXPECT_EQ(detect_ag_a_scale(br, a2, 0, 2, 256), ScaleMode::kBlockwiseReplicated);
  TensorView bad = bs;  // K-major: not the cuBLASLt VEC128 layout
  bad.strides[0] = 2;
  bad.strides[1] = 1;
  expect_arg_error([&] { detect_ag_a_scale(bad, a2, 0, 2, 256); }, "a_scale");
}

TEST(AsyncTpPlan, BScaleModeDetectionAndFp8Pairs) {
  EXPECT_EQ(detect_b_scale(tv(1, DType::kFloat32, {1}), 256, 128, "b_scale"), ScaleMode::kTensorwise);
  EXPECT_EQ(detect_b_scale(tv(1, DType::kFloat32, {1, 128}), 256, 128, "b_scale"), ScaleMode::kRowwise);
  EXPECT_EQ(detect_b_scale(tv(1, DType::kFloat32, {128}), 256, 128, "b_scale"), ScaleMode::kRowwise);
  TensorView blk = tv(1, DType::kFloat32, {2, 1});
  EXPECT_EQ(detect_b_scale(blk, 256, 128, "b_scale"), ScaleMode::kBlockwise);
  expect_arg_error([] { detect_b_scale(tv(1, DType::kFloat32, {3, 7}), 256, 128, "b_scale"); }, "b_scale");
  // Mixing tensorwise A with rowwise B is refused.
  AllGatherMatmulArgs a;
  a.a_shard = tv(1, DType::kFloat8E4M3, {64, 256});
  a.b[0] = TensorView::weight_t(addr(2), DType::kFloat8E4M3, 256, 128);
  a.out[0] = tv(3, DType::kBFloat16, {128, 128});
  a.a_scale = tv(4, DType::kFloat32, {1});
  a.b_scale[0] = tv(5, DType::kFloat32, {1, 128});
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "a_scale");
  a.b_scale[0] = tv(5, DType::kFloat32, {1});
  const AgPlan p = plan_all_gather_matmul(a, 2);
  EXPECT_EQ(p.a_scale, ScaleMode::kTensorwise);
  a.b_scale[0] = TensorView{};
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "b_scale");
  // FP8 B must be the transposed weight.
  a.b_scale[0] = tv(5, DType::kFloat32, {1});
  a.b[0] = tv(2, DType::kFloat8E4M3, {256, 128});
  expect_arg_error([&] { plan_all_gather_matmul(a, 2); }, "b");
  // Rowwise sharded scales are gathered: one slot of shard rows per rank.
  a.b[0] = TensorView::weight_t(addr(2), DType::kFloat8E4M3, 256, 128);
  a.a_scale = tv(4, DType::kFloat32, {64, 1});
  a.b_scale[0] = tv(5, DType::kFloat32, {1, 128});
  EXPECT_EQ(plan_all_gather_matmul(a, 2).scale_slot_bytes, 64u * 4);
}

MatmulReduceScatterArgs rs_bf16(std::initializer_list<int64_t> a_sizes, int d, int W, int64_t N) {
  MatmulReduceScatterArgs r;
  r.a = tv(1, DType::kBFloat16, a_sizes);
  const int n = r.a.ndim;
  r.b = TensorView::weight_t(addr(2), DType::kBFloat16, r.a.sizes[n - 1], N);
  TensorView o = r.a;
  o.data = addr(3);
  o.sizes[n - 1] = N;
  o.sizes[d] /= W;
  int64_t st = 1;
  for (int i = n - 1; i >= 0; --i) {
    o.strides[i] = st;
    st *= o.sizes[i];
  }
  r.out = o;
  r.scatter_dim = d;
  return r;
}

TEST(AsyncTpPlan, RsScatterDimMappingThroughReshape) {
  // 3-D A (B=4, S=64, k=128) -> output (4, 64, N); scatter dim 1 at W=2: 4 batches of 32 rows per chunk.
  RsPlan p = plan_matmul_reduce_scatter(rs_bf16({4, 64, 128}, 1, 2, 256), 2);
  EXPECT_FALSE(p.scatter_n);
  EXPECT_EQ(p.outer, 4);
  EXPECT_EQ(p.c, 32);
  EXPECT_EQ(p.chunk_rows, 128);
  EXPECT_EQ(p.M, 256);
  p = plan_matmul_reduce_scatter(rs_bf16({4, 64, 128}, 0, 2, 256), 2);
  EXPECT_EQ(p.outer, 1);
  EXPECT_EQ(p.c, 128);
  p = plan_matmul_reduce_scatter(rs_bf16({4, 64, 128}, 2, 2, 256), 2);
  EXPECT_TRUE(p.scatter_n);
  EXPECT_EQ(p.chunk_n, 128);
  EXPECT_EQ(p.chunk_rows, 256);
  // 4-D, scatter dim 2: outer = 2*3, c = (8/4)*5.
  p = plan_matmul_reduce_scatter(rs_bf16({2, 3, 8, 5, 64}, 2, 4, 64), 4);
  EXPECT_EQ(p.outer, 6);
  EXPECT_EQ(p.c, 10);
  EXPECT_EQ(p.chunk_bytes, static_cast<std::size_t>(6 * 10 * 64 * 2));
  expect_arg_error([] { plan_matmul_reduce_scatter(rs_bf16({4, 63, 128}, 1, 1, 256), 2); }, "scatter_dim");
  auto r = rs_bf16({4, 64, 128}, 1, 2, 256);
  r.scatter_dim = 3;
  expect_arg_error([&] { plan_matmul_reduce_scatter(r, 2); }, "scatter_dim");
  r = rs_bf16({4, 64, 128}, 1, 2, 256);
  r.out.sizes[1] = 64;
  expect_arg_error([&] { plan_matmul_reduce_scatter(r, 2); }, "out");
  r = rs_bf16({4, 64, 128}, 1, 2, 256);
  r.bias = tv(5, DType::kBFloat16, {128});
  expect_arg_error([&] { plan_matmul_reduce_scatter(r, 2); }, "bias");
}

TEST(AsyncTpPlan, RsScaleModes) {
  MatmulReduceScatterArgs r;
  r.a = tv(1, DType::kFloat8E4M3, {2, 128, 256});
  r.b = TensorView::weight_t(addr(2), DType::kFloat8E4M3, 256, 128);
  r.out = tv(3, DType::kBFloat16, {2, 64, 128});
  r.scatter_dim = 1;
  r.a_scale = tv(4, DType::kFloat32, {2, 128, 1});
  r.b_scale = tv(5, DType::kFloat32, {1, 128});
  EXPECT_EQ(plan_matmul_reduce_scatter(r, 2).a_scale, ScaleMode::kRowwise);
  r.a_scale = tv(4, DType::kFloat32, {2, 64, 1});
  expect_arg_error([&] { plan_matmul_reduce_scatter(r, 2); }, "a_scale");
  TensorView s = tv(4, DType::kFloat32, {256, 2});
  s.strides[0] = 1;
  s.strides[1] = 256;
  r.a_scale = s;
  r.b_scale = tv(5, DType::kFloat32, {2, 1});
  // K = 256 blockwise: refused (cuBLASLt gave wrong results there on H200), naming the argument.
  try {
    plan_matmul_reduce_scatter(r, 2);
    ADD_FAILURE() << "K = 256 blockwise accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_EQ(std::string(e.what()).rfind("unsupported: b_scale:", 0), 0u) << e.what();
  }
  r.a = tv(1, DType::kFloat8E4M3, {2, 128, 512});
  r.b = TensorView::weight_t(addr(2), DType::kFloat8E4M3, 512, 128);
  s = tv(4, DType::kFloat32, {256, 4});
  s.strides[0] = 1;
  s.strides[1] = 256;
  r.a_scale = s;
  r.b_scale = tv(5, DType::kFloat32, {4, 1});
  EXPECT_EQ(plan_matmul_reduce_scatter(r, 2).a_scale, ScaleMode::kBlockwise);
}

TEST(AsyncTpPlan, EngineChoice) {
  const AgPlan p = plan_all_gather_matmul(ag_bf16({256, 512}, 0, 2, 384), 2);
  EngineQuery q;
  AsyncTpOptions o;
  EXPECT_EQ(decide_ag(p, o, q).engine, AsyncTpEngine::kNative);
  q.native_reason = "not sm_90";
  AsyncTpDecision d = decide_ag(p, o, q);
  EXPECT_EQ(d.engine, AsyncTpEngine::kDecomposed);
  EXPECT_TRUE(d.fused);
  o.engine = AsyncTpEngine::kNative;
  d = decide_ag(p, o, q);
  EXPECT_FALSE(d.fused);
  EXPECT_NE(d.reason.find("not sm_90"), std::string::npos);
  q = EngineQuery{};
  q.fast_path = false;
  q.fast_path_reason = "ranks span nodes";
  o.engine = AsyncTpEngine::kAuto;
  d = decide_ag(p, o, q);
  EXPECT_FALSE(d.fused);
  EXPECT_EQ(d.engine, AsyncTpEngine::kUnfused);
  EXPECT_NE(d.reason.find("ranks span nodes"), std::string::npos);
  // Gathering a non-leading dim with leading dims > 1: decomposed only.
  const AgPlan p3 = plan_all_gather_matmul(ag_bf16({4, 64, 512}, 1, 2, 384), 2);
  q = EngineQuery{};
  EXPECT_EQ(decide_ag(p3, AsyncTpOptions{}, q).engine, AsyncTpEngine::kDecomposed);
  // RS: decomposed; native pinned is refused with the reason.
  const RsPlan r = plan_matmul_reduce_scatter(rs_bf16({256, 128}, 0, 2, 64), 2);
  EXPECT_EQ(decide_rs(r, AsyncTpOptions{}, q).engine, AsyncTpEngine::kDecomposed);
  o.engine = AsyncTpEngine::kNative;
  EXPECT_FALSE(decide_rs(r, o, q).fused);
  o.transport = AsyncTpTransport::kSm;
  o.engine = AsyncTpEngine::kDecomposed;
  EXPECT_EQ(decide_rs(r, o, q).transport, AsyncTpTransport::kSm);
}

TEST(AsyncTpPlan, ChunkOrdersArePermutationsAndMatchThePushOrder) {
  for (int W = 1; W <= 8; ++W)
    for (int r = 0; r < W; ++r) {
      std::set<int> ag, rs;
      for (int s = 0; s < W; ++s) {
        ag.insert(ag_chunk_at(s, r, W));
        rs.insert(rs_chunk_at(s, r, W));
      }
      EXPECT_EQ(static_cast<int>(ag.size()), W);
      EXPECT_EQ(static_cast<int>(rs.size()), W);
      EXPECT_EQ(ag_chunk_at(0, r, W), r);       // own shard first (already local)
      EXPECT_EQ(rs_chunk_at(W - 1, r, W), r);   // own output chunk last
      // Rank q pushes to q+1 at its first step, so rank r's first peer chunk is r-1's.
      if (W > 1) EXPECT_EQ(ag_chunk_at(1, r, W), (r + W - 1) % W);
    }
}

TEST(AsyncTpPlan, NamesRoundTrip) {
  for (auto e : {AsyncTpEngine::kAuto, AsyncTpEngine::kDecomposed, AsyncTpEngine::kNative, AsyncTpEngine::kUnfused})
    EXPECT_EQ(parse_async_tp_engine(async_tp_engine_name(e)), e);
  for (auto t : {AsyncTpTransport::kAuto, AsyncTpTransport::kCopyEngine, AsyncTpTransport::kSm})
    EXPECT_EQ(parse_async_tp_transport(async_tp_transport_name(t)), t);
  expect_arg_error([] { parse_async_tp_engine("fast"); }, "engine");
  expect_arg_error([] { parse_async_tp_transport("nvls"); }, "transport");
}

}  // namespace
}  // namespace tpcomm::detail
