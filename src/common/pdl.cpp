#include "common/pdl.h"

#include <cstdlib>
#include <cstring>

namespace tpcomm::detail {

bool pdl_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("TPCOMM_PDL");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

}  // namespace tpcomm::detail
