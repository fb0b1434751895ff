// tpcomm-bench: one CLI for every benchmark suite.
//   tpcomm-bench                      run every suite with its defaults (the README's main job)
//   tpcomm-bench <suite> [options]    run one suite; `tpcomm-bench <suite> --help` lists its options
#include <cstdlib>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "suites.h"

namespace tpcomm::bench {
std::map<std::string, Suite>& suite_registry() {
  static std::map<std::string, Suite> registry;
  return registry;
}
}  // namespace tpcomm::bench

int main(int argc, char** argv) {
  // Before the first CUDA call: a loopback world runs several ranks in one context, where a lazy module load can
  // wait for another rank's spinning kernel (tests/common/gpu_main.cpp says more).
  setenv("CUDA_MODULE_LOADING", "EAGER", 0);
  auto& reg = tpcomm::bench::suite_registry();
  if (argc >= 2 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::printf("usage: tpcomm-bench [suite [options]]\nsuites:\n");
    for (auto& [name, s] : reg) std::printf("  %-12s %s\n", name.c_str(), s.help.c_str());
    std::printf("with no suite, every suite runs with its defaults\n");
    return 0;
  }
  if (argc >= 2 && argv[1][0] != '-') {
    auto it = reg.find(argv[1]);
    if (it == reg.end()) {
      std::fprintf(stderr, "tpcomm-bench: unknown suite '%s' (try --help)\n", argv[1]);
      return 2;
    }
    return it->second.run(argc - 1, argv + 1);
  }
  // Default job: every suite in order, passing through any global options (e.g. --out DIR).
  std::vector<std::pair<int, std::string>> order;
  for (auto& [name, s] : reg) order.emplace_back(s.order, name);
  std::sort(order.begin(), order.end());
  int rc = 0;
  for (auto& [o, name] : order) {
    std::vector<char*> args;
    args.push_back(const_cast<char*>(name.c_str()));
    for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
    std::printf("==== tpcomm-bench %s ====\n", name.c_str());
    std::fflush(stdout);
    const int r = reg[name].run(static_cast<int>(args.size()), args.data());
    if (r != 0) rc = r;
  }
  return rc;
}
