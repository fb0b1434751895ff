// tpcomm-launch [-n N] [--timeout S] [--] cmd args...  : one process per local GPU (or N), like a tiny mpirun.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tpcomm/error.h"
#include "tpcomm/launch.h"

int main(int argc, char** argv) {
  tpcomm::LaunchOptions opt;
  int i = 1;
  for (; i < argc; ++i) {
    if (!std::strcmp(argv[i], "-n") && i + 1 < argc) opt.nproc = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--timeout") && i + 1 < argc) opt.timeout_s = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--")) { ++i; break; }
    else break;
  }
  if (i >= argc) {
    std::fprintf(stderr, "usage: tpcomm-launch [-n N] [--timeout S] [--] cmd args...\n");
    return 2;
  }
  std::vector<std::string> cmd(argv + i, argv + argc);
  try {
    return tpcomm::launch_local(cmd, opt);
  } catch (const tpcomm::Error& e) {
    std::fprintf(stderr, "tpcomm-launch: %s\n", e.what());
    return 2;
  }
}
