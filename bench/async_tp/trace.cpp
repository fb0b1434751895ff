#include "async_tp/trace.h"

#include <cupti.h>
#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <type_traits>
#include <vector>

#include "common.h"

namespace tpcomm::bench::atp {
namespace {

struct CuptiApi {
  void* lib = nullptr;
  decltype(&cuptiActivityRegisterCallbacks) register_callbacks = nullptr;
  decltype(&cuptiActivityEnable) enable = nullptr;
  decltype(&cuptiActivityDisable) disable = nullptr;
  decltype(&cuptiActivityFlushAll) flush_all = nullptr;
  decltype(&cuptiActivityGetNextRecord) next_record = nullptr;
  decltype(&cuptiGetTimestamp) timestamp = nullptr;
  decltype(&cuptiSetThreadIdType) set_thread_id_type = nullptr;
  decltype(&cuptiGetCallbackName) callback_name = nullptr;
  decltype(&cuptiGetResultString) result_string = nullptr;
};

// libcupti from the loader path, the CUDA toolkit, or a Python environment's nvidia/cu13 wheel.
bool load_cupti(CuptiApi& a, std::string* why) {
  std::vector<std::string> names = {"libcupti.so.13", "libcupti.so"};
  if (const char* p = std::getenv("TPCOMM_CUPTI_LIB")) names.insert(names.begin(), p);
  for (const char* root : {"/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/local/cuda/extras/CUPTI/lib64"})
    names.push_back(std::string(root) + "/libcupti.so.13");
  std::string tried;
  for (const auto& n : names) {
    a.lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (a.lib) break;
    tried += (tried.empty() ? "" : ", ") + n;
  }
  if (!a.lib) {
    *why = "libcupti not found (tried " + tried + "; set TPCOMM_CUPTI_LIB)";
    return false;
  }
  bool ok = true;
  auto sym = [&](auto& f, const char* name) {
    f = reinterpret_cast<std::remove_reference_t<decltype(f)>>(dlsym(a.lib, name));
    if (!f) {
      ok = false;
      *why = std::string("libcupti has no ") + name;
    }
  };
  sym(a.register_callbacks, "cuptiActivityRegisterCallbacks");
  sym(a.enable, "cuptiActivityEnable");
  sym(a.disable, "cuptiActivityDisable");
  sym(a.flush_all, "cuptiActivityFlushAll");
  sym(a.next_record, "cuptiActivityGetNextRecord");
  sym(a.timestamp, "cuptiGetTimestamp");
  sym(a.set_thread_id_type, "cuptiSetThreadIdType");
  sym(a.callback_name, "cuptiGetCallbackName");
  sym(a.result_string, "cuptiGetResultString");
  return ok;
}

struct GpuRec {
  int kind = 0;  // 0 kernel, 1 memcpy, 2 peer memcpy, 3 memset
  std::string name;
  uint64_t start = 0, end = 0, bytes = 0;
  uint32_t device = 0, stream = 0, corr = 0, value = 0;
  int src_dev = -1, dst_dev = -1;
  int copy_kind = 0;
  int grid = 0, block = 0;
};
struct ApiRec {
  std::string name;
  uint64_t start = 0, end = 0;
  uint32_t tid = 0;
};

class CuptiTracer;
CuptiTracer* g_tracer = nullptr;  // CUPTI's buffer callbacks are process-global

const CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                     CUPTI_ACTIVITY_KIND_MEMCPY2, CUPTI_ACTIVITY_KIND_MEMSET,
                                     CUPTI_ACTIVITY_KIND_RUNTIME, CUPTI_ACTIVITY_KIND_DRIVER};

bool interesting_api(const std::string& n) {
  for (const char* k : {"StreamWaitValue", "StreamWriteValue", "BatchMemOp", "StreamWaitEvent", "EventRecord"})
    if (n.find(k) != std::string::npos) return true;
  return false;
}

std::string demangle(const std::string& n) {
  int status = 0;
  char* d = abi::__cxa_demangle(n.c_str(), nullptr, nullptr, &status);
  std::string out = (status == 0 && d) ? d : n;
  std::free(d);
  // Template argument lists make names unreadable in a timeline: keep the function name and its outer scope.
  if (out.size() > 160) out = out.substr(0, 157) + "...";
  return out;
}

// What a piece of work is, from its name (for the trace's "cat" and colour grouping).
std::string category(const GpuRec& r, const std::string& name) {
  if (r.kind == 1 || r.kind == 2) return "copy (copy engine)";
  if (r.kind == 3) return "memset";
  std::string l = name;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  auto has = [&](const char* k) { return l.find(k) != std::string::npos; };
  if (has("nccl")) return "nccl";
  if (has("gemm") || has("cutlass") || has("nvjet") || has("xmma") || has("matmul")) return "gemm";
  if (has("wait")) return "wait";
  if (has("signal") || has("flag")) return "signal";
  if (has("copy") || has("push") || has("gather")) return "copy (SM)";
  if (has("reduce")) return "reduce";
  return "kernel";
}

class CuptiTracer final : public Tracer {
 public:
  CuptiApi api;
  std::mutex mu;
  std::vector<GpuRec> gpu;
  std::map<uint32_t, uint32_t> corr_tid;   // API correlation id -> enqueuing thread (system tid)
  std::vector<ApiRec> apis;                // the interesting ones
  std::map<uint32_t, int> tid_rank;
  std::map<int, int> rank_device;
  struct Phase { int rank; std::string name; unsigned long long t0, t1; };
  std::vector<Phase> phases;
  unsigned long long t_start = 0;
  bool finished = false;

  ~CuptiTracer() override {
    if (g_tracer != this) return;
    if (!finished) {
      for (auto k : kKinds) api.disable(k);
      api.flush_all(1);
    }
    g_tracer = nullptr;
  }

  static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *size = std::size_t(8) << 20;
    *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
    *max_records = 0;
  }
  static void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
    if (g_tracer) g_tracer->parse(buffer, valid);
    std::free(buffer);
  }

  void parse(uint8_t* buffer, size_t valid) {
    std::lock_guard<std::mutex> lk(mu);
    CUpti_Activity* rec = nullptr;
    while (api.next_record(buffer, valid, &rec) == CUPTI_SUCCESS) {
      switch (rec->kind) {
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        case CUPTI_ACTIVITY_KIND_KERNEL: {
          const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
          GpuRec g;
          g.kind = 0;
          g.name = k->name ? k->name : "?";
          g.start = k->start;
          g.end = k->end;
          g.device = k->deviceId;
          g.stream = k->streamId;
          g.corr = k->correlationId;
          g.grid = k->gridX * k->gridY * k->gridZ;
          g.block = k->blockX * k->blockY * k->blockZ;
          gpu.push_back(std::move(g));
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
          const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
          GpuRec g;
          g.kind = 1;
          g.start = m->start;
          g.end = m->end;
          g.bytes = m->bytes;
          g.device = m->deviceId;
          g.stream = m->streamId;
          g.corr = m->correlationId;
          g.copy_kind = m->copyKind;
          gpu.push_back(std::move(g));
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY2: {
          const auto* m = reinterpret_cast<const CUpti_ActivityMemcpyPtoP4*>(rec);
          GpuRec g;
          g.kind = 2;
          g.start = m->start;
          g.end = m->end;
          g.bytes = m->bytes;
          g.device = m->deviceId;
          g.stream = m->streamId;
          g.corr = m->correlationId;
          g.src_dev = static_cast<int>(m->srcDeviceId);
          g.dst_dev = static_cast<int>(m->dstDeviceId);
          g.copy_kind = m->copyKind;
          gpu.push_back(std::move(g));
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
          const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(rec);
          GpuRec g;
          g.kind = 3;
          g.start = m->start;
          g.end = m->end;
          g.bytes = m->bytes;
          g.value = m->value;
          g.device = m->deviceId;
          g.stream = m->streamId;
          g.corr = m->correlationId;
          gpu.push_back(std::move(g));
          break;
        }
        case CUPTI_ACTIVITY_KIND_RUNTIME:
        case CUPTI_ACTIVITY_KIND_DRIVER: {
          const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(rec);
          corr_tid[a->correlationId] = a->threadId;
          const char* nm = nullptr;
          const CUpti_CallbackDomain dom =
              rec->kind == CUPTI_ACTIVITY_KIND_DRIVER ? CUPTI_CB_DOMAIN_DRIVER_API : CUPTI_CB_DOMAIN_RUNTIME_API;
          if (api.callback_name(dom, a->cbid, &nm) == CUPTI_SUCCESS && nm && interesting_api(nm))
            apis.push_back({nm, a->start, a->end, a->threadId});
          break;
        }
        default: break;
      }
    }
  }

  void bind_thread(int rank, int device) override {
    std::lock_guard<std::mutex> lk(mu);
    tid_rank[static_cast<uint32_t>(syscall(SYS_gettid))] = rank;
    rank_device[rank] = device;
  }
  unsigned long long now() override {
    uint64_t t = 0;
    api.timestamp(&t);
    return t;
  }
  void phase(int rank, const std::string& name, unsigned long long t0, unsigned long long t1) override {
    std::lock_guard<std::mutex> lk(mu);
    phases.push_back({rank, name, t0, t1});
  }
  void mark_stream(int rank, cudaStream_t stream, void* four_bytes) override {
    BENCH_CUDA(cudaMemsetAsync(four_bytes, 0xA5, 4, stream));
  }

  int rank_of(uint32_t corr, uint32_t device) const {
    auto c = corr_tid.find(corr);
    if (c != corr_tid.end()) {
      auto r = tid_rank.find(c->second);
      if (r != tid_rank.end()) return r->second;
    }
    // One process per GPU: the device names the rank when exactly one rank uses it.
    int found = -1, n = 0;
    for (auto& [r, d] : rank_device)
      if (static_cast<uint32_t>(d) == device) { found = r; ++n; }
    return n == 1 ? found : -1;
  }

  bool finish(const std::string& path, const std::string& meta, std::string* why) override {
    BENCH_CUDA(cudaDeviceSynchronize());
    api.flush_all(1);
    for (auto k : kKinds) api.disable(k);
    api.flush_all(1);
    finished = true;
    std::lock_guard<std::mutex> lk(mu);
    auto us = [&](unsigned long long t) { return t >= t_start ? (t - t_start) / 1000.0 : -(double)(t_start - t) / 1000.0; };
    std::vector<std::string> ev;
    char buf[512];
    const int kUnattributed = 99;
    std::set<int> pids;
    std::map<std::pair<int, uint32_t>, bool> streams;  // (rank, stream) -> is the caller stream
    for (const GpuRec& g : gpu) {
      const int rank = rank_of(g.corr, g.device);
      const int pid = rank < 0 ? kUnattributed : rank;
      pids.insert(pid);
      const bool marker = g.kind == 3 && g.bytes == 4 && (g.value & 0xFF) == 0xA5;
      auto& caller = streams[{pid, g.stream}];
      caller = caller || marker;
      if (marker) continue;
      std::string name;
      if (g.kind == 0) name = demangle(g.name);
      else if (g.kind == 3) name = "memset " + format_size(g.bytes);
      else {
        name = "memcpy " + format_size(g.bytes);
        if (g.kind == 2) name += " GPU" + std::to_string(g.src_dev) + "->GPU" + std::to_string(g.dst_dev);
      }
      JsonObject args;
      args.add("device", static_cast<int>(g.device)).add("stream", static_cast<int>(g.stream));
      if (g.kind != 0) args.add("bytes", static_cast<std::size_t>(g.bytes));
      if (g.kind == 0) args.add("grid", g.grid).add("block", g.block).add("mangled", g.name);
      if ((g.kind == 1 || g.kind == 2) && g.end > g.start)
        args.add("GBps", static_cast<double>(g.bytes) / static_cast<double>(g.end - g.start));
      JsonObject e;
      e.add("name", name).add("cat", category(g, name)).add("ph", "X").add("pid", pid).add("tid", static_cast<int>(g.stream));
      e.add("ts", us(g.start)).add("dur", (g.end - g.start) / 1000.0).add_raw("args", args.str());
      ev.push_back(e.str());
    }
    // Host tracks: tid 1 000 000 = enqueue of stream memory operations and event waits, 1 000 001 = phases.
    const int kHostTid = 1000000, kPhaseTid = 1000001;
    for (const ApiRec& a : apis) {
      auto r = tid_rank.find(a.tid);
      if (r == tid_rank.end()) continue;  // not a rank thread (e.g. a library-internal thread)
      pids.insert(r->second);
      JsonObject e;
      e.add("name", a.name + " (enqueue)").add("cat", "host: signal/wait enqueue").add("ph", "X").add("pid", r->second);
      e.add("tid", kHostTid).add("ts", us(a.start)).add("dur", (a.end - a.start) / 1000.0);
      ev.push_back(e.str());
    }
    for (const Phase& p : phases) {
      pids.insert(p.rank);
      JsonObject e;
      e.add("name", p.name).add("cat", "phase").add("ph", "X").add("pid", p.rank).add("tid", kPhaseTid);
      e.add("ts", us(p.t0)).add("dur", (p.t1 - p.t0) / 1000.0);
      ev.push_back(e.str());
    }
    for (int pid : pids) {
      std::string pname = pid == kUnattributed ? "unattributed (no rank thread enqueued it)" : "rank " + std::to_string(pid);
      auto d = rank_device.find(pid);
      if (d != rank_device.end()) pname += " (GPU " + std::to_string(d->second) + ")";
      std::snprintf(buf, sizeof(buf), "{\"ph\": \"M\", \"name\": \"process_name\", \"pid\": %d, \"args\": {\"name\": %s}}", pid,
                    json_escape(pname).c_str());
      ev.push_back(buf);
      std::snprintf(buf, sizeof(buf), "{\"ph\": \"M\", \"name\": \"process_sort_index\", \"pid\": %d, \"args\": {\"sort_index\": %d}}",
                    pid, pid);
      ev.push_back(buf);
      if (pid == kUnattributed) continue;
      std::snprintf(buf, sizeof(buf), "{\"ph\": \"M\", \"name\": \"thread_name\", \"pid\": %d, \"tid\": %d, \"args\": {\"name\": \"host: stream memops / event waits (enqueue time)\"}}",
                    pid, kHostTid);
      ev.push_back(buf);
      std::snprintf(buf, sizeof(buf), "{\"ph\": \"M\", \"name\": \"thread_name\", \"pid\": %d, \"tid\": %d, \"args\": {\"name\": \"phase (host)\"}}",
                    pid, kPhaseTid);
      ev.push_back(buf);
    }
    for (auto& [key, caller] : streams) {
      const std::string tname = "stream " + std::to_string(key.second) + (caller ? " (caller's stream)" : " (side stream)");
      std::snprintf(buf, sizeof(buf), "{\"ph\": \"M\", \"name\": \"thread_name\", \"pid\": %d, \"tid\": %u, \"args\": {\"name\": %s}}",
                    key.first, key.second, json_escape(tname).c_str());
      ev.push_back(buf);
    }
    std::string text = "{\"displayTimeUnit\": \"ns\",\n\"meta\": " + meta + ",\n\"traceEvents\": " + json_array(ev) + "}\n";
    if (!write_file(path, text)) {
      *why = "cannot write " + path;
      return false;
    }
    return true;
  }
};

}  // namespace

std::unique_ptr<Tracer> Tracer::start(std::string* why) {
  if (g_tracer) {
    *why = "a trace is already running";
    return nullptr;
  }
  auto t = std::make_unique<CuptiTracer>();
  if (!load_cupti(t->api, why)) return nullptr;
  t->api.set_thread_id_type(CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM);
  CUptiResult r = t->api.register_callbacks(&CuptiTracer::buffer_requested, &CuptiTracer::buffer_completed);
  auto err = [&](const char* what) {
    const char* s = nullptr;
    t->api.result_string(r, &s);
    *why = std::string(what) + ": " + (s ? s : "CUPTI error " + std::to_string(static_cast<int>(r)));
  };
  if (r != CUPTI_SUCCESS) {
    err("cuptiActivityRegisterCallbacks");
    return nullptr;
  }
  for (auto k : kKinds) {
    r = t->api.enable(k);
    if (r != CUPTI_SUCCESS) {
      err("cuptiActivityEnable");
      return nullptr;
    }
  }
  g_tracer = t.get();
  t->t_start = t->now();
  return t;
}

}  // namespace tpcomm::bench::atp
