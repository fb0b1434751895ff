#include "common.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "tpcomm/error.h"
#include "tpcomm/launch.h"

namespace tpcomm::bench {

std::size_t parse_size(const std::string& text) {
  if (text.empty()) throw std::invalid_argument("empty size");
  std::size_t pos = 0;
  const double v = std::stod(text, &pos);
  std::string suffix = text.substr(pos);
  if (!suffix.empty() && (suffix.back() == 'B' || suffix.back() == 'b')) suffix.pop_back();
  if (suffix.size() == 2 && (suffix[1] == 'i' || suffix[1] == 'I')) suffix.pop_back();
  double mul = 1;
  if (suffix.empty()) mul = 1;
  else if (suffix == "K" || suffix == "k") mul = 1024.0;
  else if (suffix == "M" || suffix == "m") mul = 1024.0 * 1024;
  else if (suffix == "G" || suffix == "g") mul = 1024.0 * 1024 * 1024;
  else throw std::invalid_argument("bad size suffix in '" + text + "'");
  return static_cast<std::size_t>(std::llround(v * mul));
}

std::string format_size(std::size_t b) {
  const char* units[] = {"", "K", "M", "G"};
  int u = 0;
  while (u < 3 && b >= 1024 && b % 1024 == 0) {
    b /= 1024;
    ++u;
  }
  return std::to_string(b) + units[u];
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double time_eager_us(cudaStream_t stream, const std::function<void()>& fn, int iters, int reps, int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  BENCH_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t e0, e1;
  BENCH_CUDA(cudaEventCreate(&e0));
  BENCH_CUDA(cudaEventCreate(&e1));
  std::vector<double> samples;
  for (int r = 0; r < reps; ++r) {
    BENCH_CUDA(cudaEventRecord(e0, stream));
    for (int i = 0; i < iters; ++i) fn();
    BENCH_CUDA(cudaEventRecord(e1, stream));
    BENCH_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    samples.push_back(1000.0 * ms / iters);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return median(samples);
}

double time_graph_us(cudaStream_t stream, const std::function<void()>& fn, int iters, int reps,
                     const std::function<void()>& after_capture,
                     const std::function<void(cudaGraphExec_t)>& after_timing) {
  fn();  // warm-up outside capture (lazy init must not happen inside the graph)
  BENCH_CUDA(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  BENCH_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < iters; ++i) fn();
  BENCH_CUDA(cudaStreamEndCapture(stream, &graph));
  BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  if (after_capture) after_capture();
  BENCH_CUDA(cudaGraphLaunch(exec, stream));  // warm-up replay
  BENCH_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t e0, e1;
  BENCH_CUDA(cudaEventCreate(&e0));
  BENCH_CUDA(cudaEventCreate(&e1));
  std::vector<double> samples;
  for (int r = 0; r < reps; ++r) {
    BENCH_CUDA(cudaEventRecord(e0, stream));
    BENCH_CUDA(cudaGraphLaunch(exec, stream));
    BENCH_CUDA(cudaEventRecord(e1, stream));
    BENCH_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    samples.push_back(1000.0 * ms / iters);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  if (after_timing) after_timing(exec);  // outside the timed region
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return median(samples);
}

double measure_copy_GBps(std::size_t bytes, int reps) {
  void *a = nullptr, *b = nullptr;
  BENCH_CUDA(cudaMalloc(&a, bytes));
  BENCH_CUDA(cudaMalloc(&b, bytes));
  BENCH_CUDA(cudaMemset(a, 1, bytes));
  cudaStream_t s;
  BENCH_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const double us = time_eager_us(s, [&] { BENCH_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s)); },
                                  1, reps, 2);
  cudaStreamDestroy(s);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (us * 1e3);
}

std::string device_name(int device) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return "unknown";
  return p.name;
}

std::string join_command(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    if (i) out += ' ';
    out += argv[i];
  }
  return out;
}

std::string json_escape(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

JsonObject& JsonObject::add(const std::string& key, const std::string& value) { return add_raw(key, json_escape(value)); }

JsonObject& JsonObject::add(const std::string& key, double value) {
  if (!std::isfinite(value)) return add_raw(key, "null");
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", value);
  return add_raw(key, buf);
}

JsonObject& JsonObject::add(const std::string& key, const std::vector<long long>& values) {
  std::string s = "[";
  for (std::size_t i = 0; i < values.size(); ++i) s += (i ? "," : "") + std::to_string(values[i]);
  return add_raw(key, s + "]");
}

JsonObject& JsonObject::add_raw(const std::string& key, const std::string& json) {
  kv_.emplace_back(key, json);
  return *this;
}

std::string JsonObject::str() const {
  std::string s = "{";
  for (std::size_t i = 0; i < kv_.size(); ++i) s += (i ? ", " : "") + json_escape(kv_[i].first) + ": " + kv_[i].second;
  return s + "}";
}

std::string json_array(const std::vector<std::string>& items) {
  std::string s = "[\n";
  for (std::size_t i = 0; i < items.size(); ++i) s += "  " + items[i] + (i + 1 < items.size() ? ",\n" : "\n");
  return s + "]";
}

bool write_file(const std::string& path, const std::string& text) {
  std::error_code ec;
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  std::ofstream f(path);
  if (!f) {
    std::fprintf(stderr, "tpcomm-bench: cannot write %s\n", path.c_str());
    return false;
  }
  f << text;
  return static_cast<bool>(f);
}

bool relaunch_per_gpu(const char* suite, int argc, char** argv, int nproc, double timeout_s, int* rc) {
  if (launched_by_env()) return false;
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess) ndev = 0;
  const int n = nproc > 0 ? nproc : ndev;
  if (n < 2 || ndev < 2) {
    std::printf("%s: skipped: needs 2 or more GPUs (%d visible)\n", suite, ndev);
    *rc = 0;
    return true;
  }
  char exe[4096] = {0};
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len <= 0) {
    std::fprintf(stderr, "%s: cannot find this executable (/proc/self/exe)\n", suite);
    *rc = 2;
    return true;
  }
  std::vector<std::string> cmd = {exe};
  for (int i = 0; i < argc; ++i) cmd.push_back(argv[i]);
  LaunchOptions lo;
  lo.nproc = n;
  lo.timeout_s = timeout_s;
  *rc = launch_local(cmd, lo);
  return true;
}

int run_suite_guarded(const char* suite, int (*body)(int, char**), int argc, char** argv) {
  try {
    return body(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: %s\n", suite, e.what());
    return 1;
  }
}

}  // namespace tpcomm::bench
