// Host side of the signal-pad operations (tpcomm/symmetric_memory.h: signal_pad_barrier/put/wait).
#include <string>

#include "comm/comm_impl.h"
#include "common/check.h"
#include "symm/signal_kernels.cuh"
#include "tpcomm/communicator.h"
#include "tpcomm/error.h"
#include "tpcomm/symmetric_memory.h"

namespace tpcomm {
namespace {

void launch_signal(const Communicator& comm, const SymmetricBuffer& buf, detail::SignalOp op, int peer, int channel,
                   cudaStream_t stream, uint32_t timeout_ms, const char* what) {
  detail::CommImpl& c = comm.impl();
  c.ensure_usable(what);
  comm.check();
  TPCOMM_ARG_CHECK(buf.world_size() == comm.world_size() && buf.rank() == comm.rank(), "buf",
                   std::string("was allocated over another communicator (rank ") + std::to_string(buf.rank()) + " of " +
                       std::to_string(buf.world_size()) + ", comm: rank " + std::to_string(comm.rank()) + " of " +
                       std::to_string(comm.world_size()) + ")");
  const int W = comm.world_size();
  if (op != detail::SignalOp::kBarrier)
    TPCOMM_ARG_CHECK(peer >= 0 && peer < W, op == detail::SignalOp::kPut ? "dst_rank" : "src_rank",
                     std::to_string(peer) + " is outside the world of " + std::to_string(W) + " ranks");
  TPCOMM_ARG_CHECK(channel >= 0, "channel", "must be non-negative, got " + std::to_string(channel));
  const std::size_t need = (static_cast<std::size_t>(channel) + 1) * W * sizeof(uint32_t);
  TPCOMM_ARG_CHECK(need <= buf.signal_pad_bytes(), "channel",
                   std::to_string(channel) + " needs " + std::to_string(need) + " signal-pad bytes, the buffer has " +
                       std::to_string(buf.signal_pad_bytes()));
  detail::SignalParams p{};
  p.pads = buf.device_peer_signal_pads();
  p.rank = comm.rank();
  p.world = W;
  p.channel = channel;
  p.peer = peer;
  p.op = op;
  p.sync = comm.sync_context();
  if (timeout_ms > 0) p.sync.timeout_ns = static_cast<uint64_t>(timeout_ms) * 1000000ull;
  detail::signal_pad_kernel<<<1, 32, 0, stream>>>(p);
  TPCOMM_CUDA_CHECK(cudaGetLastError());
  c.note_enqueued(stream);
}

}  // namespace

void signal_pad_barrier(const Communicator& comm, const SymmetricBuffer& buf, int channel, cudaStream_t stream,
                        uint32_t timeout_ms) {
  launch_signal(comm, buf, detail::SignalOp::kBarrier, -1, channel, stream, timeout_ms, "signal_pad_barrier");
}

void signal_pad_put(const Communicator& comm, const SymmetricBuffer& buf, int dst_rank, int channel, cudaStream_t stream,
                    uint32_t timeout_ms) {
  launch_signal(comm, buf, detail::SignalOp::kPut, dst_rank, channel, stream, timeout_ms, "signal_pad_put");
}

void signal_pad_wait(const Communicator& comm, const SymmetricBuffer& buf, int src_rank, int channel,
                     cudaStream_t stream, uint32_t timeout_ms) {
  launch_signal(comm, buf, detail::SignalOp::kWait, src_rank, channel, stream, timeout_ms, "signal_pad_wait");
}

}  // namespace tpcomm
