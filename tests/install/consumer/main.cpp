// Links against an installed libtpcomm and calls what runs without a GPU: names, the all-reduce crossover table and
// selection, and an error naming its argument. Exit 0 and "consumer: ok" when every check holds.
#include <cstdio>
#include <string>

#include "tpcomm/tpcomm.h"

namespace {
int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "consumer: FAILED %s\n", what);
    ++failures;
  }
}
}  // namespace

int main() {
  expect(tpcomm::dtype_size(tpcomm::parse_dtype("bf16")) == 2, "parse_dtype(bf16) is 2 bytes");
  expect(std::string(tpcomm::all_reduce_algo_name(tpcomm::parse_all_reduce_algo("two_shot"))) == "two_shot",
         "all-reduce algorithm names round-trip");
  const tpcomm::AllReduceTable table = tpcomm::default_all_reduce_table(2);
  const tpcomm::AllReduceAlgo small = tpcomm::select_all_reduce(table, 4096, true, 1 << 20, 1 << 24, 1 << 26);
  expect(small != tpcomm::AllReduceAlgo::kNccl, "auto picks a tpcomm kernel for 4 KiB with peer memory");
  expect(tpcomm::select_all_reduce(table, 4096, false, 1 << 20, 1 << 24, 1 << 26) == tpcomm::AllReduceAlgo::kNccl,
         "auto picks NCCL without peer memory");
  try {
    tpcomm::parse_dtype("complex128", "x");
    expect(false, "parse_dtype(complex128) throws");
  } catch (const tpcomm::Error& e) {
    expect(e.code() == tpcomm::ErrorCode::kInvalidArgument, "the error is kInvalidArgument");
    expect(std::string(e.what()).rfind("invalid_argument: x: ", 0) == 0, "the message names the argument");
  }
  if (failures) return 1;
  std::printf("consumer: ok (auto for 4 KiB at W=2: %s)\n", tpcomm::all_reduce_algo_name(small));
  return 0;
}
