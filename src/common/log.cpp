#include "tpcomm/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <mutex>

namespace tpcomm {
namespace {

std::mutex g_mu;
LogCallback g_cb;

LogLevel initial_level() {
  const char* env = std::getenv("TPCOMM_LOG_LEVEL");
  if (!env) return LogLevel::kWarn;
  if (!std::strcmp(env, "error")) return LogLevel::kError;
  if (!std::strcmp(env, "info")) return LogLevel::kInfo;
  if (!std::strcmp(env, "debug")) return LogLevel::kDebug;
  return LogLevel::kWarn;
}

std::atomic<int>& level_ref() {
  static std::atomic<int> level{static_cast<int>(initial_level())};
  return level;
}

const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
  }
  return "?";
}

}  // namespace

void set_log_callback(LogCallback cb) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_cb = std::move(cb);
}

void set_log_level(LogLevel level) { level_ref().store(static_cast<int>(level)); }

LogLevel log_level() { return static_cast<LogLevel>(level_ref().load(std::memory_order_relaxed)); }

void log(LogLevel level, const std::string& message) {
  if (static_cast<int>(level) > level_ref().load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_cb) {
    g_cb(level, message);
  } else {
    std::fprintf(stderr, "[tpcomm %s] %s\n", level_name(level), message.c_str());
  }
}

}  // namespace tpcomm
