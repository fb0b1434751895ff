// Benchmark suite registry: each suite file registers itself with TPCOMM_BENCH_SUITE, and
// `tpcomm-bench <suite> [args]` runs it; `tpcomm-bench` alone runs every suite with its defaults.
#pragma once

#include <functional>
#include <map>
#include <string>

namespace tpcomm::bench {

struct Suite {
  std::string help;                          // one line for --help
  std::function<int(int, char**)> run;       // argv[0] is the suite name
  int order = 0;                             // order in the default "run everything" job
};

std::map<std::string, Suite>& suite_registry();

struct SuiteRegistrar {
  SuiteRegistrar(const std::string& name, int order, const std::string& help, std::function<int(int, char**)> fn) {
    suite_registry()[name] = Suite{help, std::move(fn), order};
  }
};

}  // namespace tpcomm::bench

#define TPCOMM_BENCH_SUITE(name, order, help, fn) \
  static ::tpcomm::bench::SuiteRegistrar tpcomm_bench_suite_##fn(name, order, help, fn)
