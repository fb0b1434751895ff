// Shared pieces of tpcomm-bench: size parsing, CUDA-event timing (eager and CUDA graph), medians, a small
// JSON builder, and the device-to-device copy bandwidth every suite reports next to its own numbers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace tpcomm::bench {

// "8", "1K", "1KiB", "256M", "2G" -> bytes (K/M/G are powers of 1024).
std::size_t parse_size(const std::string& text);
std::string format_size(std::size_t bytes);  // 8192 -> "8K", 1<<20 -> "1M"

double median(std::vector<double> v);

// Checks a CUDA call in bench code; prints and exits (the CLI, not the library, decides to exit).
#define BENCH_CUDA(expr)                                                                                \
  do {                                                                                                  \
    cudaError_t e_ = (expr);                                                                            \
    if (e_ != cudaSuccess) {                                                                            \
      std::fprintf(stderr, "tpcomm-bench: %s failed: %s (%s:%d)\n", #expr, cudaGetErrorString(e_), __FILE__, \
                   __LINE__);                                                                           \
      std::exit(2);                                                                                     \
    }                                                                                                   \
  } while (0)

// Eager timing: `reps` samples, each `iters` back-to-back calls of fn (which enqueues on `stream`) between
// two events; returns the median over samples of (sample time / iters), in microseconds.
double time_eager_us(cudaStream_t stream, const std::function<void()>& fn, int iters, int reps, int warmup = 3);
// Graph timing: captures `iters` back-to-back calls into one CUDA graph, replays it `reps` times; returns
// the median over replays of (replay time / iters), in microseconds. `after_capture` runs once between
// capture and the first replay (used to register graph buffers). `after_timing` runs once after the timed
// replays, before the graph is destroyed, with the instantiated graph (used to check a replay's output).
double time_graph_us(cudaStream_t stream, const std::function<void()>& fn, int iters, int reps,
                     const std::function<void()>& after_capture = {},
                     const std::function<void(cudaGraphExec_t)>& after_timing = {});

// Device-to-device copy bandwidth on the current device, counting bytes read + bytes written (GB/s).
double measure_copy_GBps(std::size_t bytes = std::size_t(1) << 30, int reps = 10);

std::string device_name(int device);

// Multi-GPU suites started without a launcher (torchrun, mpirun, tpcomm-launch): re-runs this executable
// with the same arguments as one process per GPU (nproc, or every visible GPU when 0) and returns the
// launcher's exit code in *rc. Returns false when the caller is already one rank and should go on.
// Fewer than 2 GPUs: prints "<suite>: skipped: ..." and sets *rc = 0. timeout_s: kill the ranks after
// that long (0: no limit).
bool relaunch_per_gpu(const char* suite, int argc, char** argv, int nproc, double timeout_s, int* rc);

// Runs a suite body, turning a tpcomm::Error into "<suite>: message" on stderr and exit code 1.
int run_suite_guarded(const char* suite, int (*body)(int, char**), int argc, char** argv);
std::string join_command(int argc, char** argv);

// Minimal JSON object builder (values are rendered on insertion, keys keep insertion order).
class JsonObject {
 public:
  JsonObject& add(const std::string& key, const std::string& value);
  JsonObject& add(const std::string& key, const char* value) { return add(key, std::string(value)); }
  JsonObject& add(const std::string& key, double value);
  JsonObject& add(const std::string& key, int value) { return add_raw(key, std::to_string(value)); }
  JsonObject& add(const std::string& key, long long value) { return add_raw(key, std::to_string(value)); }
  JsonObject& add(const std::string& key, std::size_t value) { return add_raw(key, std::to_string(value)); }
  JsonObject& add(const std::string& key, bool value) { return add_raw(key, value ? "true" : "false"); }
  JsonObject& add(const std::string& key, const std::vector<long long>& values);
  JsonObject& add_raw(const std::string& key, const std::string& json);
  std::string str() const;

 private:
  std::vector<std::pair<std::string, std::string>> kv_;
};

std::string json_escape(const std::string& s);
std::string json_array(const std::vector<std::string>& items);  // items are already JSON
// Writes text to path, creating parent folders. Returns false (and prints why) on failure.
bool write_file(const std::string& path, const std::string& text);

}  // namespace tpcomm::bench
