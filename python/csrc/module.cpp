// pybind11 half of tpcomm._C: everything that is not a tensor op (communicators, symmetric buffers, graph-capture
// scopes, errors, logging). No torch header is included here: tensors reach this file only as DLPack capsules it
// makes and raw pointers / stream handles (ints) that Python reads off torch objects. The torch ops are in ops.cpp.
//
// GIL: every call that enters the library releases the GIL first. Collectives block until every rank has called them,
// and the ranks of a loopback world are threads of this one process; library code may also log, and the log callback
// (Python's `logging`) takes the GIL while the library's log lock is held.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "registry.h"
#include "tpcomm/async_tp.h"
#include "tpcomm/tpcomm.h"

namespace py = pybind11;

namespace tpcomm::binding {
namespace {

using CommPtr = std::shared_ptr<Communicator>;

// ---- errors ---------------------------------------------------------------------------------------------------------
// Python callable (code, message) -> exception instance (tpcomm._errors.from_code). Leaked on purpose: a py::object
// with static storage would be released after the interpreter is gone.
PyObject* g_error_factory = nullptr;

void translate(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const Error& e) {
    if (!g_error_factory) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
      return;
    }
    PyObject* exc = PyObject_CallFunction(g_error_factory, "is", static_cast<int>(e.code()), e.what());
    if (!exc) return;  // the factory raised: that exception propagates
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
    Py_DECREF(exc);
  }
}

// ---- logging --------------------------------------------------------------------------------------------------------
// The library calls its callback with its log lock held, from any thread. The sink takes the GIL for the Python call.
// The Python object is dropped only with the GIL held: the module keeps the last reference (g_sink) and releases it
// after the library has let go of the old callback.
struct PySink {
  py::object fn;
};
std::shared_ptr<PySink> g_sink;  // guarded by the GIL

void set_python_log_callback(py::object fn) {
  std::shared_ptr<PySink> sink;
  LogCallback cb;
  if (!fn.is_none()) {
    sink = std::make_shared<PySink>(PySink{fn});
    cb = [sink](LogLevel level, const std::string& message) {
      if (!Py_IsInitialized()) return;
      py::gil_scoped_acquire gil;
      try {
        sink->fn(static_cast<int>(level), message);
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("tpcomm log callback");
      }
    };
  }
  {
    py::gil_scoped_release nogil;
    set_log_callback(std::move(cb));
  }
  g_sink = std::move(sink);  // the old sink's Python object is released here, GIL held
}

// ---- DLPack (the stable C ABI; only what a capsule needs) -------------------------------------------------------------
struct DLDevice {
  int32_t device_type;  // kDLCUDA = 2
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // kDLUInt = 1
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

// ---- symmetric buffers ------------------------------------------------------------------------------------------------
// A buffer together with the communicator it was allocated over (kept alive while the buffer or any tensor over it is).
struct SymmHandle {
  CommPtr comm;
  std::shared_ptr<SymmetricBuffer> buf;
};

// Every live buffer, so that symm.rendezvous(t) can find the buffer under any tensor viewing its memory. Weak: the
// buffer lives as long as Python handles or tensors (DLPack contexts) hold it.
std::mutex g_live_mu;
std::vector<std::weak_ptr<SymmHandle>> g_live;

void note_live(const std::shared_ptr<SymmHandle>& h) {
  std::lock_guard<std::mutex> lock(g_live_mu);
  std::erase_if(g_live, [](const std::weak_ptr<SymmHandle>& w) { return w.expired(); });
  g_live.push_back(h);
}

// The live buffer whose local data [local, local + bytes) contains `ptr`, or nullptr.
std::shared_ptr<SymmHandle> find_live(uintptr_t ptr) {
  std::lock_guard<std::mutex> lock(g_live_mu);
  for (const auto& w : g_live) {
    auto h = w.lock();
    if (!h) continue;
    const auto base = reinterpret_cast<uintptr_t>(h->buf->local());
    if (ptr >= base && ptr < base + h->buf->bytes()) return h;
  }
  return nullptr;
}

struct DlpackCtx {
  std::shared_ptr<SymmHandle> keep;
  int64_t shape[1];
  int64_t strides[1];
  DLManagedTensor managed;
};

void dlpack_deleter(DLManagedTensor* self) { delete static_cast<DlpackCtx*>(self->manager_ctx); }

void capsule_destructor(PyObject* capsule) {
  // Still named "dltensor": never consumed by a framework, so the capsule owns it.
  if (PyCapsule_IsValid(capsule, "dltensor")) {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (m && m->deleter) m->deleter(m);
  }
}

// A uint8 CUDA tensor of `bytes` at `ptr` on `device` that keeps `keep` alive until the framework frees it.
py::capsule make_dlpack(const std::shared_ptr<SymmHandle>& keep, void* ptr, std::size_t bytes, int device) {
  auto* ctx = new DlpackCtx{};
  ctx->keep = keep;
  ctx->shape[0] = static_cast<int64_t>(bytes);
  ctx->strides[0] = 1;
  DLTensor& t = ctx->managed.dl_tensor;
  t.data = ptr;
  t.device = DLDevice{2, device};
  t.ndim = 1;
  t.dtype = DLDataType{1, 8, 1};
  t.shape = ctx->shape;
  t.strides = ctx->strides;
  t.byte_offset = 0;
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = dlpack_deleter;
  PyObject* cap = PyCapsule_New(&ctx->managed, "dltensor", capsule_destructor);
  if (!cap) {
    delete ctx;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

// ---- helpers --------------------------------------------------------------------------------------------------------
template <typename T>
T* ptr_of(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

CommPtr share(std::unique_ptr<Communicator> c) { return CommPtr(std::move(c)); }

py::dict topology_dict(const Topology& t) {
  py::dict d;
  d["world_size"] = t.world_size;
  d["nodes"] = t.nodes;
  d["peer_access"] = t.peer_access;
  d["nvlink"] = t.nvlink;
  d["nvml_available"] = t.nvml_available;
  d["probe_ok"] = t.probe_ok;
  d["fast_path"] = t.fast_path;
  d["loopback"] = t.loopback;
  d["reason"] = t.reason;
  return d;
}

py::dict stats_dict(const CommStats& s) {
  py::dict d;
  d["fast_calls"] = s.fast_calls;
  d["nccl_calls"] = s.nccl_calls;
  d["nccl_fallbacks"] = s.nccl_fallbacks;
  d["copy_in_calls"] = s.copy_in_calls;
  d["zero_copy_calls"] = s.zero_copy_calls;
  d["async_tp_fused_calls"] = s.async_tp_fused_calls;
  d["async_tp_unfused_calls"] = s.async_tp_unfused_calls;
  d["async_tp_fallbacks"] = s.async_tp_fallbacks;
  return d;
}

ncclUniqueId unique_id_from(const py::bytes& b) {
  const std::string s = b;
  if (s.size() != sizeof(ncclUniqueId))
    throw Error(ErrorCode::kInvalidArgument, "unique_id: must be " + std::to_string(sizeof(ncclUniqueId)) +
                                                 " bytes (ncclUniqueId), got " + std::to_string(s.size()));
  ncclUniqueId id;
  std::memcpy(&id, s.data(), sizeof(id));
  return id;
}

// A GraphCapture scope held by Python (capture() context managers open and close it).
struct CaptureScope {
  CommPtr comm;
  std::unique_ptr<GraphCapture> scope;
  void close() { scope.reset(); }
};

using release_gil = py::call_guard<py::gil_scoped_release>;

}  // namespace
}  // namespace tpcomm::binding

PYBIND11_MODULE(_C, m) {
  using namespace tpcomm;
  using namespace tpcomm::binding;
  m.doc() = "tpcomm native module: communicators, symmetric memory, errors, logging (torch ops: torch.ops.tpcomm)";

  py::register_exception_translator(&translate);
  m.def("_set_error_factory", [](py::object fn) {
    Py_XDECREF(g_error_factory);
    g_error_factory = fn.inc_ref().ptr();
  });
  m.def("error_code_names", [] {
    py::dict d;
    for (int c = static_cast<int>(ErrorCode::kInvalidArgument); c <= static_cast<int>(ErrorCode::kInternal); ++c)
      d[py::int_(c)] = error_code_name(static_cast<ErrorCode>(c));
    return d;
  });
  // Raises tpcomm::Error(code, message) through the translator (the error-mapping tests use it for every code).
  m.def("_raise", [](int code, const std::string& message) { throw Error(static_cast<ErrorCode>(code), message); });

  // ---- logging
  m.def("set_log_callback", &set_python_log_callback, py::arg("fn"),
        "fn(level: int, message: str) receives every library log line (None: back to stderr)");
  m.def("set_log_level", [](int level) {
    if (level < 0 || level > 3) throw Error(ErrorCode::kInvalidArgument, "level: must be 0..3 (error..debug), got " + std::to_string(level));
    set_log_level(static_cast<LogLevel>(level));
  });
  m.def("log_level", [] { return static_cast<int>(log_level()); });
  m.def("log", [](int level, const std::string& msg) { log(static_cast<LogLevel>(level), msg); }, release_gil());

  // ---- names (canonical spellings; throw kInvalidArgument naming the argument)
  m.def("parse_all_reduce_algo", [](const std::string& s) { return std::string(all_reduce_algo_name(parse_all_reduce_algo(s))); });
  m.def("parse_async_tp_engine", [](const std::string& s) { return std::string(async_tp_engine_name(parse_async_tp_engine(s))); });
  m.def("parse_dtype", [](const std::string& s, const std::string& arg) { return std::string(dtype_name(parse_dtype(s, arg.c_str()))); },
        py::arg("text"), py::arg("arg_name") = "dtype");
  m.def("parse_reduce_op", [](const std::string& s, const std::string& arg) { return std::string(reduce_op_name(parse_reduce_op(s, arg.c_str()))); },
        py::arg("text"), py::arg("arg_name") = "op");

  // ---- communicators
  py::class_<CommOptions>(m, "CommOptions")
      .def(py::init<>())
      .def_readwrite("two_shot_max_bytes", &CommOptions::two_shot_max_bytes)
      .def_readwrite("one_shot_max_bytes", &CommOptions::one_shot_max_bytes)
      .def_readwrite("lamport_max_bytes", &CommOptions::lamport_max_bytes)
      .def_readwrite("copy_engine_max_bytes", &CommOptions::copy_engine_max_bytes)
      .def_readwrite("timeout_s", &CommOptions::timeout_s)
      .def_readwrite("force_nccl", &CommOptions::force_nccl);

  m.def("nccl_unique_id", [] {
    ncclUniqueId id;
    {
      py::gil_scoped_release nogil;
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess)
        throw Error(ErrorCode::kNcclError, std::string("ncclGetUniqueId: ") + ncclGetErrorString(r));
    }
    return py::bytes(reinterpret_cast<const char*>(&id), sizeof(id));
  });

  py::class_<Communicator, CommPtr>(m, "Communicator")
      .def_static("create", [](int rank, int world, int device, const py::bytes& uid, const CommOptions& o) {
            const ncclUniqueId id = unique_id_from(uid);
            py::gil_scoped_release nogil;
            return share(Communicator::create(rank, world, device, id, o));
          }, py::arg("rank"), py::arg("world_size"), py::arg("device"), py::arg("unique_id"), py::arg("options") = CommOptions{})
      .def_static("adopt", [](uintptr_t nccl_comm, const CommOptions& o) {
            return share(Communicator::adopt(reinterpret_cast<ncclComm_t>(nccl_comm), o));
          }, py::arg("nccl_comm"), py::arg("options") = CommOptions{}, release_gil())
      .def_static("create_loopback", [](int world, int device, const CommOptions& o) {
            std::vector<CommPtr> out;
            for (auto& c : Communicator::create_loopback(world, device, o)) out.push_back(share(std::move(c)));
            return out;
          }, py::arg("world_size"), py::arg("device"), py::arg("options") = CommOptions{}, release_gil())
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("world_size", &Communicator::world_size)
      .def_property_readonly("device", &Communicator::device)
      .def_property_readonly("fast_path", &Communicator::fast_path)
      .def_property_readonly("loopback", &Communicator::loopback)
      .def_property_readonly("topology", [](const Communicator& c) { return topology_dict(c.topology()); })
      .def_property_readonly("options", [](const Communicator& c) { return c.options(); })
      .def_property_readonly("nccl_comm_ptr", [](const Communicator& c) { return reinterpret_cast<uintptr_t>(c.nccl()); })
      .def("stats", [](const Communicator& c) { return stats_dict(c.stats()); })
      .def("check", &Communicator::check, release_gil())
      .def("synchronize", [](const Communicator& c, uintptr_t s) { c.synchronize(stream_of(s)); }, py::arg("stream"), release_gil())
      .def("destroy", [](Communicator& c) {
            c.destroy();
            unregister_comm(&c);
          }, release_gil())
      .def("host_barrier", &Communicator::host_barrier, release_gil())
      .def("resolve_all_reduce", [](const Communicator& c, std::size_t bytes, const std::string& algo) {
            return std::string(all_reduce_algo_name(resolve_all_reduce(c, bytes, parse_all_reduce_algo(algo))));
          }, py::arg("bytes"), py::arg("algo") = "auto", release_gil())
      .def("register_buffer", [](const Communicator& c, uintptr_t ptr, std::size_t bytes) {
            register_buffer(c, ptr_of<void>(ptr), bytes);
          }, py::arg("ptr"), py::arg("bytes"), release_gil())
      .def("register_graph_buffers", [](const Communicator& c) { register_graph_buffers(c); }, release_gil())
      .def("graph_capture", [](const CommPtr& c) {
            auto s = std::make_unique<CaptureScope>();
            s->comm = c;
            s->scope = std::make_unique<GraphCapture>(*c);
            return s;
          })
      .def("reserve_async_tp", [](const Communicator& c, std::size_t ag, std::size_t rs) { reserve_async_tp(c, ag, rs); },
           py::arg("ag_gathered_bytes"), py::arg("rs_output_bytes"), release_gil())
      // The C++ call on raw pointers (what the torch op wraps): the overhead bench captures both.
      .def("all_reduce_ptr", [](const Communicator& c, uintptr_t in, uintptr_t out, std::size_t count, const std::string& dtype,
                                const std::string& op, uintptr_t stream, const std::string& algo, bool zero_copy) {
            AllReduceOptions o;
            o.algo = parse_all_reduce_algo(algo);
            o.zero_copy = zero_copy;
            return std::string(all_reduce_algo_name(all_reduce(c, ptr_of<const void>(in), ptr_of<void>(out), count,
                                                               parse_dtype(dtype), parse_reduce_op(op, "reduce_op"),
                                                               stream_of(stream), o)));
          }, py::arg("input"), py::arg("output"), py::arg("count"), py::arg("dtype"), py::arg("reduce_op"), py::arg("stream"),
          py::arg("algo") = "auto", py::arg("zero_copy") = false, release_gil());

  py::class_<CaptureScope>(m, "GraphCapture").def("close", &CaptureScope::close, release_gil());

  // ---- group registry
  m.def("register_group", &register_group, py::arg("name"), py::arg("comm"), py::arg("owner"));
  m.def("unregister_group", &unregister_group, py::arg("name"));
  m.def("group_names", &group_names);
  m.def("group_info", [](const std::string& name) -> py::object {
    GroupEntry e = find_group(name);
    if (!e.comm) return py::none();
    py::dict d;
    d["comm"] = e.comm;
    d["owner"] = e.owner;
    d["rank"] = e.comm->rank();
    d["world_size"] = e.comm->world_size();
    d["device"] = e.comm->device();
    return d;
  }, py::arg("name"));

  // ---- symmetric memory
  py::class_<SymmHandle, std::shared_ptr<SymmHandle>>(m, "SymmetricBuffer")
      .def_static("allocate", [](const CommPtr& comm, std::size_t bytes, std::size_t pad_bytes) {
            auto h = std::make_shared<SymmHandle>();
            h->comm = comm;
            h->buf = std::shared_ptr<SymmetricBuffer>(SymmetricBuffer::allocate(*comm, bytes, pad_bytes));
            note_live(h);
            return h;
          }, py::arg("comm"), py::arg("bytes"), py::arg("signal_pad_bytes") = std::size_t(64 * 1024), release_gil())
      .def_static("lookup", [](uintptr_t ptr) { return find_live(ptr); }, py::arg("ptr"),
                  "the live buffer whose local data contains ptr (None when there is none)")
      .def_property_readonly("comm", [](const SymmHandle& h) { return h.comm; })
      .def_property_readonly("rank", [](const SymmHandle& h) { return h.buf->rank(); })
      .def_property_readonly("world_size", [](const SymmHandle& h) { return h.buf->world_size(); })
      .def_property_readonly("bytes", [](const SymmHandle& h) { return h.buf->bytes(); })
      .def_property_readonly("signal_pad_bytes", [](const SymmHandle& h) { return h.buf->signal_pad_bytes(); })
      .def_property_readonly("buffer_ptrs", [](const SymmHandle& h) {
            std::vector<uintptr_t> v;
            for (int r = 0; r < h.buf->world_size(); ++r) v.push_back(reinterpret_cast<uintptr_t>(h.buf->peer(r)));
            return v;
          })
      .def_property_readonly("signal_pad_ptrs", [](const SymmHandle& h) {
            std::vector<uintptr_t> v;
            for (int r = 0; r < h.buf->world_size(); ++r) v.push_back(reinterpret_cast<uintptr_t>(h.buf->peer_signal_pad(r)));
            return v;
          })
      .def_property_readonly("buffer_ptrs_dev", [](const SymmHandle& h) { return reinterpret_cast<uintptr_t>(h.buf->device_peer_ptrs()); })
      .def_property_readonly("signal_pad_ptrs_dev", [](const SymmHandle& h) {
            return reinterpret_cast<uintptr_t>(h.buf->device_peer_signal_pads());
          })
      // Rank `rank`'s data (or signal pad) as a DLPack uint8 tensor on this rank's device, keeping the buffer alive.
      .def("dlpack", [](const std::shared_ptr<SymmHandle>& h, int rank, bool signal_pad) {
            void* p = signal_pad ? static_cast<void*>(h->buf->peer_signal_pad(rank)) : h->buf->peer(rank);
            return make_dlpack(h, p, signal_pad ? h->buf->signal_pad_bytes() : h->buf->bytes(), h->comm->device());
          }, py::arg("rank"), py::arg("signal_pad") = false)
      .def("barrier", [](const SymmHandle& h, int channel, uintptr_t stream, uint32_t timeout_ms) {
            signal_pad_barrier(*h.comm, *h.buf, channel, stream_of(stream), timeout_ms);
          }, py::arg("channel"), py::arg("stream"), py::arg("timeout_ms"), release_gil())
      .def("put_signal", [](const SymmHandle& h, int dst, int channel, uintptr_t stream, uint32_t timeout_ms) {
            signal_pad_put(*h.comm, *h.buf, dst, channel, stream_of(stream), timeout_ms);
          }, py::arg("dst_rank"), py::arg("channel"), py::arg("stream"), py::arg("timeout_ms"), release_gil())
      .def("wait_signal", [](const SymmHandle& h, int src, int channel, uintptr_t stream, uint32_t timeout_ms) {
            signal_pad_wait(*h.comm, *h.buf, src, channel, stream_of(stream), timeout_ms);
          }, py::arg("src_rank"), py::arg("channel"), py::arg("stream"), py::arg("timeout_ms"), release_gil());
}
