// --trace: a Chrome / Perfetto trace (JSON "traceEvents") of one instrumented eager call per implementation, taken
// with CUPTI's activity API (libcupti is loaded at run time; the bench does not link it):
//   * every kernel (GEMM chunks, tpcomm's SM copy / wait / reduce kernels, NCCL), copy-engine copy (memcpy, peer
//     copies) and memset, with its GPU start/end, on the stream it ran on, under the rank that enqueued it
//     (CUPTI's correlation id -> the API call -> the enqueuing thread -> the rank; one thread per rank);
//   * the host-side enqueue of stream memory operations and cross-stream event waits (cuStreamWriteValue32,
//     cuStreamWaitValue32, cudaStreamWaitEvent, ...): CUPTI has no GPU-side record of them, so the trace shows when
//     each was enqueued, and a GPU-side wait appears as the gap before the work that depends on it;
//   * one "phase" range per implementation and rank (host time from just before the call to after its stream
//     finished).
// Timestamps are CUPTI's (GPU times normalized to the host clock), in microseconds since the trace started.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>

namespace tpcomm::bench::atp {

class Tracer {
 public:
  // Loads libcupti and enables the activity kinds. nullptr (and *why) when CUPTI is not available.
  static std::unique_ptr<Tracer> start(std::string* why);
  virtual ~Tracer() = default;
  // Called by each rank thread before it enqueues traced work.
  virtual void bind_thread(int rank, int device) = 0;
  // Host time now (CUPTI clock, ns).
  virtual unsigned long long now() = 0;
  virtual void phase(int rank, const std::string& name, unsigned long long t0, unsigned long long t1) = 0;
  // The rank's caller stream gets a name: enqueue a 4-byte memset on it (seen by CUPTI) so its stream id is known.
  virtual void mark_stream(int rank, cudaStream_t stream, void* four_bytes) = 0;
  // Flushes, disables CUPTI and writes the trace. `meta` is a JSON object (already rendered) stored under "meta".
  virtual bool finish(const std::string& path, const std::string& meta, std::string* why) = 0;
};

}  // namespace tpcomm::bench::atp
