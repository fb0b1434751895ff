// main() of tpcomm_mp_tests. Skips (exit 77, "skipped: ...") without a GPU or with fewer than 2.
#include <gtest/gtest.h>

#include <cstdio>

#include "common/mp.h"
#include "common/test_util.h"
#include "tpcomm/error.h"
#include "tpcomm/launch.h"

namespace tpcomm::test {
namespace {
std::unique_ptr<Communicator> g_comm;

// Non-zero ranks print only their failures, prefixed with the rank (rank 0 prints gtest's full report).
class FailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }
  void OnTestEnd(const testing::TestInfo& t) override {
    if (t.result()->Failed()) std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, t.test_suite_name(), t.name());
  }

 private:
  int rank_;
};
}  // namespace

Communicator& mp_comm() { return *g_comm; }

std::unique_ptr<Communicator> fresh_comm(const CommOptions& options) {
  ncclUniqueId id{};
  if (g_comm->rank() == 0) ncclGetUniqueId(&id);
  std::vector<ncclUniqueId> ids(g_comm->world_size());
  g_comm->host_all_gather(&id, ids.data(), sizeof(id));
  return Communicator::create(g_comm->rank(), g_comm->world_size(), g_comm->device(), ids[0], options);
}

}  // namespace tpcomm::test

int main(int argc, char** argv) {
  const int ndev = tpcomm::test::cuda_device_count();
  if (ndev == 0) {
    std::printf("skipped: no CUDA device\n");
    return tpcomm::test::kSkipExitCode;
  }
  if (!tpcomm::launched_by_env()) {
    std::printf("skipped: start under tpcomm-launch, torchrun or mpirun (one process per GPU)\n");
    return tpcomm::test::kSkipExitCode;
  }
  if (ndev < 2) {
    std::printf("skipped: multi-GPU tests need 2 GPUs, %d visible\n", ndev);
    return tpcomm::test::kSkipExitCode;
  }
  testing::InitGoogleTest(&argc, argv);
  int rc = 1;
  try {
    tpcomm::test::g_comm = tpcomm::Communicator::from_env();
    if (tpcomm::test::g_comm->rank() != 0) {
      // Only rank 0 prints gtest's report; the others report failures through their exit code.
      auto& listeners = testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new tpcomm::test::FailurePrinter(tpcomm::test::g_comm->rank()));
    }
    rc = RUN_ALL_TESTS();
    tpcomm::test::g_comm->host_barrier();
    tpcomm::test::g_comm->destroy();
  } catch (const tpcomm::Error& e) {
    std::fprintf(stderr, "mp tests: %s\n", e.what());
    return 1;
  }
  if (rc != 0) std::fprintf(stderr, "mp tests: failures on this rank\n");
  return rc;
}
