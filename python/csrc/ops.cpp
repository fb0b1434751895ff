// The torch ops of tpcomm (torch.ops.tpcomm.*): schemas (TORCH_LIBRARY) and CUDA kernels (TORCH_LIBRARY_IMPL) over
// the C++ API. Fake (meta) implementations for torch.compile are in python/tpcomm/_fake.py.
//
// Rules every kernel here follows:
//  * thin: tensors become raw pointers / tpcomm::TensorView, names become enums through the library's own parsers,
//    and the library does all validation (its errors, tpcomm::Error, pass through unchanged; Python sees
//    RuntimeError("<code>: <message>"), which tpcomm's Python functions re-raise as tpcomm.TpcommError);
//  * everything is enqueued on the current CUDA stream of the communicator's device; nothing synchronizes; outputs are
//    allocated through torch (its caching allocator, graph-private pools under capture), never by tpcomm;
//  * only the public ATen/c10 API is used (Tensor accessors, at::empty, the current stream), kept to the helpers at the
//    top of this file, so the glue can move to the LibTorch stable ABI (STABLE_TORCH_LIBRARY).
// Process groups enter by name (str group_name), as in torch.ops.symm_mem; registry.h maps names to communicators.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "registry.h"
#include "tpcomm/async_tp.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm::binding {
namespace {

// ---- torch <-> tpcomm ---------------------------------------------------------------------------------------------
DType to_dtype(at::ScalarType t, const char* arg) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat8_e4m3fn: return DType::kFloat8E4M3;
    case at::kFloat8_e5m2: return DType::kFloat8E5M2;
    case at::kByte: return DType::kUInt8;
    case at::kInt: return DType::kInt32;
    default:
      throw Error(ErrorCode::kInvalidArgument,
                  std::string(arg) + ": dtype " + std::string(c10::toString(t)) + " has no tpcomm equivalent");
  }
}

// The communicator's device: every tensor must live there (the library takes raw pointers and cannot tell).
void check_device(const at::Tensor& t, const Communicator& comm, const std::string& arg) {
  if (!t.is_cuda() || t.get_device() != comm.device())
    throw Error(ErrorCode::kInvalidArgument, arg + ": must be on cuda:" + std::to_string(comm.device()) +
                                                 " (the communicator's device), got " + t.device().str());
}

TensorView view_of(const at::Tensor& t, const Communicator& comm, const std::string& arg) {
  check_device(t, comm, arg);
  if (t.dim() > kMaxTensorDims)
    throw Error(ErrorCode::kInvalidArgument, arg + ": " + std::to_string(t.dim()) + " dims, at most " +
                                                 std::to_string(kMaxTensorDims));
  TensorView v;
  v.data = t.data_ptr();
  v.dtype = to_dtype(t.scalar_type(), arg.c_str());
  v.ndim = static_cast<int>(t.dim());
  for (int d = 0; d < v.ndim; ++d) {
    v.sizes[d] = t.size(d);
    v.strides[d] = t.stride(d);
  }
  return v;
}

TensorView view_of(const std::optional<at::Tensor>& t, const Communicator& comm, const std::string& arg) {
  return t.has_value() && t->defined() ? view_of(*t, comm, arg) : TensorView{};
}

std::string indexed(const char* base, std::size_t i) { return std::string(base) + "[" + std::to_string(i) + "]"; }

// The current stream of the communicator's device, with that device made current for the call.
struct OnDevice {
  explicit OnDevice(const Communicator& comm)
      : guard(static_cast<c10::DeviceIndex>(comm.device())),
        stream(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(comm.device())).stream()) {}
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
};

int64_t wrap_dim(int64_t d, int64_t ndim) { return d < 0 ? d + ndim : d; }

// ---- all-reduce -------------------------------------------------------------------------------------------------------
void all_reduce_into(const at::Tensor& input, const at::Tensor& out, const std::string& reduce_op,
                     const std::string& group_name, const std::string& algo, bool zero_copy) {
  auto comm = group_comm(group_name);
  check_device(input, *comm, "input");
  check_device(out, *comm, "out");
  if (!input.is_contiguous()) throw Error(ErrorCode::kInvalidArgument, "input: must be contiguous");
  if (!out.is_contiguous()) throw Error(ErrorCode::kInvalidArgument, "out: must be contiguous");
  if (out.scalar_type() != input.scalar_type())
    throw Error(ErrorCode::kInvalidArgument, std::string("out: dtype ") + c10::toString(out.scalar_type()) +
                                                 " differs from input's " + c10::toString(input.scalar_type()));
  if (out.numel() != input.numel())
    throw Error(ErrorCode::kInvalidArgument, "out: " + std::to_string(out.numel()) + " elements, input has " +
                                                 std::to_string(input.numel()));
  AllReduceOptions o;
  o.algo = parse_all_reduce_algo(algo);
  o.zero_copy = zero_copy;
  OnDevice dev(*comm);
  all_reduce(*comm, input.data_ptr(), out.data_ptr(), static_cast<std::size_t>(input.numel()),
             to_dtype(input.scalar_type(), "input"), parse_reduce_op(reduce_op, "reduce_op"), dev.stream, o);
}

at::Tensor all_reduce_op(const at::Tensor& input, std::string reduce_op, std::string group_name, std::string algo,
                         bool zero_copy) {
  at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  all_reduce_into(input, out, reduce_op, group_name, algo, zero_copy);
  return out;
}

void all_reduce_out_op(const at::Tensor& input, std::string reduce_op, std::string group_name, std::string algo,
                       bool zero_copy, at::Tensor out) {
  all_reduce_into(input, out, reduce_op, group_name, algo, zero_copy);
}

void all_reduce_inplace_op(at::Tensor input, std::string reduce_op, std::string group_name, std::string algo,
                           bool zero_copy) {
  all_reduce_into(input, input, reduce_op, group_name, algo, zero_copy);
}

// ---- stream utilities (torch.ops.symm_mem.stream_write_value32_ / memset32_) ---------------------------------------------
uint32_t* word_at(const at::Tensor& t, int64_t offset, int64_t count, const char* op) {
  if (!t.is_cuda()) throw Error(ErrorCode::kInvalidArgument, "input: must be a CUDA tensor");
  if (t.scalar_type() != at::kUInt32 && t.scalar_type() != at::kInt)
    throw Error(ErrorCode::kInvalidArgument, std::string("input: must be uint32 or int32, got ") + c10::toString(t.scalar_type()));
  if (!t.is_contiguous()) throw Error(ErrorCode::kInvalidArgument, "input: must be contiguous");
  if (offset < 0 || count < 0 || offset + count > t.numel())
    throw Error(ErrorCode::kInvalidArgument, "offset: [" + std::to_string(offset) + ", " + std::to_string(offset + count) +
                                                 ") is outside the tensor's " + std::to_string(t.numel()) + " words");
  return static_cast<uint32_t*>(t.data_ptr()) + offset;
}

void stream_write_value32_op(at::Tensor input, int64_t offset, int64_t val) {
  uint32_t* p = word_at(input, offset, 1, "stream_write_value32_");
  c10::cuda::CUDAGuard guard(input.device());
  stream_write_value32(c10::cuda::getCurrentCUDAStream(input.get_device()).stream(), p, static_cast<uint32_t>(val));
}

void memset32_op(at::Tensor input, int64_t offset, int64_t val, int64_t count) {
  uint32_t* p = word_at(input, offset, count, "memset32_");
  c10::cuda::CUDAGuard guard(input.device());
  memset32(c10::cuda::getCurrentCUDAStream(input.get_device()).stream(), p, static_cast<uint32_t>(val),
           static_cast<std::size_t>(count));
}

// ---- async TP -------------------------------------------------------------------------------------------------------
AsyncTpOptions tp_options(const std::string& engine, bool allow_fallback, bool use_fast_accum) {
  AsyncTpOptions o;
  o.engine = parse_async_tp_engine(engine);
  o.allow_fallback = allow_fallback;
  o.use_fast_accum = use_fast_accum;
  return o;
}

// Gathered shape of A_shard: sizes[gather_dim] * world (the library rejects the last dim and out-of-range dims).
std::vector<int64_t> gathered_sizes(const at::Tensor& a, int64_t gather_dim, int world) {
  std::vector<int64_t> s(a.sizes().begin(), a.sizes().end());
  if (gather_dim >= 0 && gather_dim < static_cast<int64_t>(s.size())) s[gather_dim] *= world;
  return s;
}

struct AgResult {
  std::optional<at::Tensor> a;
  std::vector<at::Tensor> outs;
};

AgResult run_all_gather_matmul(const at::Tensor& A_in, const std::vector<at::Tensor>& Bs, const at::Tensor* A_scale,
                               const std::vector<at::Tensor>* B_scales, const std::vector<std::optional<at::Tensor>>* biases,
                               const std::vector<std::optional<at::ScalarType>>* out_dtypes, int64_t gather_dim,
                               const std::string& group_name, bool return_A, const AsyncTpOptions& opts) {
  auto comm = group_comm(group_name);
  const int W = comm->world_size();
  if (Bs.empty() || Bs.size() > static_cast<std::size_t>(kMaxFusedB))
    throw Error(ErrorCode::kInvalidArgument, "Bs: " + std::to_string(Bs.size()) + " matrices, 1.." +
                                                 std::to_string(kMaxFusedB) + " share one gather");
  // A non-contiguous shard is copied once, as torch.ops.symm_mem does (a no-op for contiguous input).
  const at::Tensor A = A_in.contiguous();
  AllGatherMatmulArgs args;
  args.gather_dim = static_cast<int>(wrap_dim(gather_dim, A.dim()));
  args.a_shard = view_of(A, *comm, "A");
  args.num_b = static_cast<int>(Bs.size());
  args.options = opts;
  if (A_scale) args.a_scale = view_of(*A_scale, *comm, "A_scale");
  std::vector<int64_t> gsizes = gathered_sizes(A, args.gather_dim, W);
  AgResult r;
  if (return_A) {
    r.a = at::empty(gsizes, A.options());
    args.a_gathered = view_of(*r.a, *comm, "A");
  }
  for (std::size_t i = 0; i < Bs.size(); ++i) {
    args.b[i] = view_of(Bs[i], *comm, indexed("Bs", i));
    std::vector<int64_t> osizes = gsizes;
    osizes.back() = Bs[i].dim() == 2 ? Bs[i].size(1) : 0;
    at::ScalarType odt = A.scalar_type();
    if (out_dtypes && (*out_dtypes)[i].has_value()) odt = *(*out_dtypes)[i];
    r.outs.push_back(at::empty(osizes, A.options().dtype(odt)));
    args.out[i] = view_of(r.outs.back(), *comm, indexed("out", i));
    if (B_scales) args.b_scale[i] = view_of((*B_scales)[i], *comm, indexed("B_scales", i));
    if (biases) args.bias[i] = view_of((*biases)[i], *comm, indexed("biases", i));
  }
  OnDevice dev(*comm);
  all_gather_matmul(*comm, args, dev.stream);
  return r;
}

std::tuple<std::optional<at::Tensor>, std::vector<at::Tensor>> fused_all_gather_matmul_op(
    const at::Tensor& A, std::vector<at::Tensor> Bs, int64_t gather_dim, std::string group_name, bool return_A,
    std::string engine, bool allow_fallback) {
  AgResult r = run_all_gather_matmul(A, Bs, nullptr, nullptr, nullptr, nullptr, gather_dim, group_name, return_A,
                                     tp_options(engine, allow_fallback, false));
  return {r.a, r.outs};
}

// The per-B lists of torch's signature: the library has one use_fast_accum per call and no FP8 outputs (so no
// result scales); a request it cannot honour is refused rather than ignored.
bool common_fast_accum(const c10::List<bool>& v, std::size_t n) {
  if (v.size() != n)
    throw Error(ErrorCode::kInvalidArgument, "use_fast_accum: " + std::to_string(v.size()) + " entries for " +
                                                 std::to_string(n) + " Bs");
  for (std::size_t i = 1; i < v.size(); ++i)
    if (v.get(i) != v.get(0))
      throw Error(ErrorCode::kUnsupported, "use_fast_accum: must be the same for every B (one cuBLASLt setting per call)");
  return n > 0 && v.get(0);
}

void check_no_result_scale(const std::optional<at::Tensor>& s, const std::string& arg) {
  if (s.has_value() && s->defined())
    throw Error(ErrorCode::kUnsupported, arg + ": FP8 outputs (which a result scale applies to) are not supported; "
                                               "outputs are bf16, f16 or f32");
}

std::tuple<at::Tensor, std::vector<at::Tensor>> fused_all_gather_scaled_matmul_op(
    const at::Tensor& A, std::vector<at::Tensor> Bs, const at::Tensor& A_scale, std::vector<at::Tensor> B_scales,
    int64_t gather_dim, std::string group_name, std::vector<std::optional<at::Tensor>> biases,
    std::vector<std::optional<at::Tensor>> result_scales, std::vector<std::optional<at::ScalarType>> out_dtypes,
    c10::List<bool> use_fast_accum, std::string engine, bool allow_fallback) {
  const std::size_t n = Bs.size();
  auto len_check = [n](std::size_t got, const char* arg) {
    if (got != n)
      throw Error(ErrorCode::kInvalidArgument, std::string(arg) + ": " + std::to_string(got) + " entries for " +
                                                   std::to_string(n) + " Bs");
  };
  len_check(B_scales.size(), "B_scales");
  len_check(biases.size(), "biases");
  len_check(result_scales.size(), "result_scales");
  len_check(out_dtypes.size(), "out_dtypes");
  for (std::size_t i = 0; i < n; ++i) check_no_result_scale(result_scales[i], indexed("result_scales", i));
  const bool fast = common_fast_accum(use_fast_accum, n);
  AgResult r = run_all_gather_matmul(A, Bs, &A_scale, &B_scales, &biases, &out_dtypes, gather_dim, group_name, true,
                                     tp_options(engine, allow_fallback, fast));
  return {*r.a, r.outs};
}

at::Tensor run_matmul_reduce_scatter(const at::Tensor& A, const at::Tensor& B, const at::Tensor* A_scale,
                                     const at::Tensor* B_scale, const std::optional<at::Tensor>* bias,
                                     std::optional<at::ScalarType> out_dtype, const std::string& reduce_op,
                                     int64_t scatter_dim, const std::string& group_name, const AsyncTpOptions& opts) {
  auto comm = group_comm(group_name);
  const int W = comm->world_size();
  MatmulReduceScatterArgs args;
  args.a = view_of(A, *comm, "A");
  args.b = view_of(B, *comm, "B");
  args.scatter_dim = static_cast<int>(wrap_dim(scatter_dim, A.dim()));
  if (reduce_op == "sum")
    args.reduce = RsReduce::kSum;
  else if (reduce_op == "avg")
    args.reduce = RsReduce::kAvg;
  else
    throw Error(ErrorCode::kInvalidArgument, "reduce_op: '" + reduce_op + "' is not supported (sum, avg)");
  args.options = opts;
  if (A_scale) args.a_scale = view_of(*A_scale, *comm, "A_scale");
  if (B_scale) args.b_scale = view_of(*B_scale, *comm, "B_scale");
  if (bias) args.bias = view_of(*bias, *comm, "bias");
  std::vector<int64_t> osizes(A.sizes().begin(), A.sizes().end());
  osizes.back() = B.dim() == 2 ? B.size(1) : 0;
  // Divisibility is the library's check (it names scatter_dim); the allocation only needs a valid size.
  if (args.scatter_dim >= 0 && args.scatter_dim < static_cast<int>(osizes.size())) osizes[args.scatter_dim] /= W;
  at::Tensor out = at::empty(osizes, A.options().dtype(out_dtype.value_or(A.scalar_type())));
  args.out = view_of(out, *comm, "out");
  OnDevice dev(*comm);
  matmul_reduce_scatter(*comm, args, dev.stream);
  return out;
}

at::Tensor fused_matmul_reduce_scatter_op(const at::Tensor& A, const at::Tensor& B, std::string reduce_op,
                                          int64_t scatter_dim, std::string group_name, std::string engine,
                                          bool allow_fallback) {
  return run_matmul_reduce_scatter(A.contiguous(), B, nullptr, nullptr, nullptr, std::nullopt, reduce_op, scatter_dim,
                                   group_name, tp_options(engine, allow_fallback, false));
}

// torch's signature carries two scatter dims because _scaled_mm is 2-D: orig_scatter_dim indexes the 3D+ output
// (output_shape) and scatter_dim_after_maybe_reshape the flattened A. The library takes A in the output's leading
// dims and scatter_dim on that output (seed 000's orig_scatter_dim), so a flattened A (and its rowwise scale) is
// viewed back into output_shape's leading dims; scatter_dim_after_maybe_reshape is implied by that view.
at::Tensor fused_scaled_matmul_reduce_scatter_op(const at::Tensor& A_in, const at::Tensor& B, const at::Tensor& A_scale_in,
                                                 const at::Tensor& B_scale, std::string reduce_op, int64_t orig_scatter_dim,
                                                 int64_t scatter_dim_after_maybe_reshape, std::string group_name,
                                                 at::OptionalIntArrayRef output_shape, const std::optional<at::Tensor>& bias,
                                                 const std::optional<at::Tensor>& result_scale,
                                                 std::optional<at::ScalarType> out_dtype, bool use_fast_accum,
                                                 std::string engine, bool allow_fallback) {
  check_no_result_scale(result_scale, "result_scale");
  at::Tensor A = A_in.contiguous();
  at::Tensor A_scale = A_scale_in;
  if (output_shape.has_value() && static_cast<int64_t>(output_shape->size()) != A.dim() && output_shape->size() >= 2) {
    std::vector<int64_t> lead(output_shape->begin(), output_shape->end() - 1);
    const bool rowwise_scale = A_scale.numel() > 1 && A_scale.dim() == A.dim() && A_scale.size(-1) == 1 &&
                               A_scale.numel() == A.numel() / A.size(-1);
    std::vector<int64_t> a_sizes = lead;
    a_sizes.push_back(A.size(-1));
    A = A.view(a_sizes);
    if (rowwise_scale) {
      std::vector<int64_t> s_sizes = lead;
      s_sizes.push_back(1);
      A_scale = A_scale.contiguous().view(s_sizes);
    }
  }
  return run_matmul_reduce_scatter(A, B, &A_scale, &B_scale, &bias, out_dtype, reduce_op, orig_scatter_dim, group_name,
                                   tp_options(engine, allow_fallback, use_fast_accum));
}

}  // namespace
}  // namespace tpcomm::binding

// Schemas. Async-TP ops keep torch.ops.symm_mem's arguments, names and order (code switches by changing the namespace);
// tpcomm's own knobs follow as keyword-only arguments with defaults: engine ("auto", "decomposed", "native",
// "unfused") and allow_fallback (run unfused instead of raising when the requested engine cannot run this call).
// output_shape is int[]? where symm_mem has SymInt[]? (the stable ABI has no SymInt).
// No op here is tagged cudagraph_unsafe: each is capturable once the communicator's workspaces are set up (the first
// async-TP call, or Communicator.reserve_async_tp, before capture).
TORCH_LIBRARY(tpcomm, m) {
  const std::vector<at::Tag> fixed_strides = {at::Tag::needs_fixed_stride_order};
  m.def("all_reduce(Tensor input, str reduce_op, str group_name, str algo=\"auto\", bool zero_copy=False) -> Tensor");
  m.def("all_reduce_out(Tensor input, str reduce_op, str group_name, str algo, bool zero_copy, Tensor(a!) out) -> ()");
  m.def("all_reduce_(Tensor(a!) input, str reduce_op, str group_name, str algo=\"auto\", bool zero_copy=False) -> ()");
  m.def("stream_write_value32_(Tensor(a!) input, int offset, int val) -> ()");
  m.def("memset32_(Tensor(a!) input, int offset, int val, int count) -> ()");
  m.def("fused_all_gather_matmul(Tensor A, Tensor[] Bs, int gather_dim, str group_name, *, bool return_A=True, "
        "str engine=\"auto\", bool allow_fallback=False) -> (Tensor?, Tensor[])",
        fixed_strides);
  m.def("fused_all_gather_scaled_matmul(Tensor A, Tensor[] Bs, Tensor A_scale, Tensor[] B_scales, int gather_dim, "
        "str group_name, Tensor?[] biases, Tensor?[] result_scales, ScalarType?[] out_dtypes, bool[] use_fast_accum, *, "
        "str engine=\"auto\", bool allow_fallback=False) -> (Tensor, Tensor[])",
        fixed_strides);
  m.def("fused_matmul_reduce_scatter(Tensor A, Tensor B, str reduce_op, int scatter_dim, str group_name, *, "
        "str engine=\"auto\", bool allow_fallback=False) -> Tensor",
        fixed_strides);
  m.def("fused_scaled_matmul_reduce_scatter(Tensor A, Tensor B, Tensor A_scale, Tensor B_scale, str reduce_op, "
        "int orig_scatter_dim, int scatter_dim_after_maybe_reshape, str group_name, int[]? output_shape, "
        "Tensor? bias=None, Tensor? result_scale=None, ScalarType? out_dtype=None, bool use_fast_accum=False, *, "
        "str engine=\"auto\", bool allow_fallback=False) -> Tensor",
        fixed_strides);
}

TORCH_LIBRARY_IMPL(tpcomm, CUDA, m) {
  using namespace tpcomm::binding;
  m.impl("all_reduce", &all_reduce_op);
  m.impl("all_reduce_out", &all_reduce_out_op);
  m.impl("all_reduce_", &all_reduce_inplace_op);
  m.impl("stream_write_value32_", &stream_write_value32_op);
  m.impl("memset32_", &memset32_op);
  m.impl("fused_all_gather_matmul", &fused_all_gather_matmul_op);
  m.impl("fused_all_gather_scaled_matmul", &fused_all_gather_scaled_matmul_op);
  m.impl("fused_matmul_reduce_scatter", &fused_matmul_reduce_scatter_op);
  m.impl("fused_scaled_matmul_reduce_scatter", &fused_scaled_matmul_reduce_scatter_op);
}
