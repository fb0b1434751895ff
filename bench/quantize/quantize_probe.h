// Memory-path probe of the quantize suite (quantize_probe.cu).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tpcomm::bench {

struct ProbeResult {
  std::string name;
  double us;
  double GBps;  // bytes read + written per second
};

// a: source region, b: destination region, `bytes` each. once: launch every probe once, untimed (for ncu).
std::vector<ProbeResult> run_memory_probe(uint8_t* a, uint8_t* b, size_t bytes, bool once);

}  // namespace tpcomm::bench
