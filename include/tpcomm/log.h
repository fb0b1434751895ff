// Logging. The library never writes to stdout. Messages go to a callback; the default callback writes one
// line to stderr ("[tpcomm] ..."). Level comes from TPCOMM_LOG_LEVEL=error|warn|info|debug (default warn).
#pragma once

#include <functional>
#include <string>

namespace tpcomm {

enum class LogLevel : int { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

using LogCallback = std::function<void(LogLevel, const std::string&)>;

// Replaces the log sink (thread-safe). Pass nullptr to restore the stderr default.
void set_log_callback(LogCallback cb);
void set_log_level(LogLevel level);
LogLevel log_level();
void log(LogLevel level, const std::string& message);

}  // namespace tpcomm
