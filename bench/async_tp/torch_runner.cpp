#include "async_tp/torch_runner.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace tpcomm::bench::atp {
namespace {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

// Runs a shell command, returns its exit status (-1 when it could not run) and its stdout in *out (if given).
int run_shell(const std::string& cmd, std::string* out) {
  if (!out) {
    const int st = std::system(cmd.c_str());
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  }
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  const int st = pclose(p);
  if (st == -1) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

struct Parser {
  const std::string& s;
  std::size_t i = 0;
  void ws() {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  }
  bool lit(const char* t) {
    const std::size_t n = std::char_traits<char>::length(t);
    if (s.compare(i, n, t) != 0) return false;
    i += n;
    return true;
  }
  bool string(std::string* out) {
    if (i >= s.size() || s[i] != '"') return false;
    ++i;
    out->clear();
    while (i < s.size() && s[i] != '"') {
      char c = s[i++];
      if (c == '\\') {
        if (i >= s.size()) return false;
        const char e = s[i++];
        switch (e) {
          case 'n': *out += '\n'; break;
          case 't': *out += '\t'; break;
          case 'r': *out += '\r'; break;
          case 'b': *out += '\b'; break;
          case 'f': *out += '\f'; break;
          case 'u': {
            if (i + 4 > s.size()) return false;
            const unsigned v = static_cast<unsigned>(std::stoul(s.substr(i, 4), nullptr, 16));
            i += 4;
            if (v < 0x80) *out += static_cast<char>(v);
            else if (v < 0x800) { *out += static_cast<char>(0xC0 | (v >> 6)); *out += static_cast<char>(0x80 | (v & 0x3F)); }
            else {
              *out += static_cast<char>(0xE0 | (v >> 12));
              *out += static_cast<char>(0x80 | ((v >> 6) & 0x3F));
              *out += static_cast<char>(0x80 | (v & 0x3F));
            }
            break;
          }
          default: *out += e;
        }
      } else {
        *out += c;
      }
    }
    if (i >= s.size()) return false;
    ++i;
    return true;
  }
};

}  // namespace

bool parse_flat_row(const std::string& line, FlatRow* out) {
  FlatRow r;
  Parser p{line};
  p.ws();
  if (!p.lit("{")) return false;
  const std::size_t begin = p.i - 1;
  p.ws();
  if (p.lit("}")) {
    r.raw = line.substr(begin, p.i - begin);
    *out = std::move(r);
    return true;
  }
  for (;;) {
    p.ws();
    std::string key;
    if (!p.string(&key)) return false;
    p.ws();
    if (!p.lit(":")) return false;
    p.ws();
    if (p.i >= line.size()) return false;
    const char c = line[p.i];
    if (c == '"') {
      std::string v;
      if (!p.string(&v)) return false;
      r.str[key] = v;
    } else if (p.lit("true")) {
      r.boolean[key] = true;
    } else if (p.lit("false")) {
      r.boolean[key] = false;
    } else if (p.lit("null")) {
      r.null[key] = true;
    } else if (c == '{' || c == '[') {
      return false;  // not flat
    } else if (p.lit("NaN") || p.lit("Infinity") || p.lit("-Infinity")) {
      r.null[key] = true;  // Python's json writes these for non-finite floats
    } else {
      std::size_t used = 0;
      double v = 0;
      try {
        v = std::stod(line.substr(p.i), &used);
      } catch (...) {
        return false;
      }
      p.i += used;
      r.num[key] = v;
    }
    p.ws();
    if (p.lit(",")) continue;
    if (p.lit("}")) break;
    return false;
  }
  r.raw = line.substr(begin, p.i - begin);
  *out = std::move(r);
  return true;
}

std::string find_torch_script(const std::string& given) {
  namespace fs = std::filesystem;
  if (!given.empty()) return given;
  std::error_code ec;
  const fs::path here = fs::path(__FILE__).parent_path() / "torch_symm_mem.py";
  if (fs::exists(here, ec)) return here.string();
  const fs::path cwd = fs::path("bench") / "async_tp" / "torch_symm_mem.py";
  if (fs::exists(cwd, ec)) return fs::absolute(cwd, ec).string();
  return here.string();
}

std::string torch_unavailable(const std::string& python, int nproc) {
  std::string out;
  const std::string cmd = shell_quote(python) +
                          " -c 'import torch, torch.distributed._symmetric_memory; "
                          "print(torch.__version__, torch.cuda.is_available(), torch.cuda.device_count())' 2>/dev/null";
  const int rc = run_shell(cmd, &out);
  if (rc != 0) return "torch is not importable by " + python + " (with torch.distributed._symmetric_memory)";
  std::istringstream is(out);
  std::string ver, avail;
  int count = 0;
  is >> ver >> avail >> count;
  if (avail != "True") return "torch " + ver + " sees no CUDA device";
  if (count < nproc) return "torch " + ver + " sees " + std::to_string(count) + " GPUs, needs " + std::to_string(nproc);
  return {};
}

TorchResult run_torch(const TorchRun& r) {
  TorchResult res;
  const std::string script = find_torch_script(r.script);
  std::error_code ec;
  if (!std::filesystem::exists(script, ec)) {
    res.why_not = "script not found: " + script;
    return res;
  }
  char tmpl[] = "/tmp/tpcomm_torch_rows_XXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd < 0) {
    res.why_not = "cannot create a temporary file for the torch rows";
    return res;
  }
  close(fd);
  const std::string out_path = tmpl;
  char tol[32], tol_fast[32];
  std::snprintf(tol, sizeof(tol), "%g", r.tol);
  std::snprintf(tol_fast, sizeof(tol_fast), "%g", r.tol_fast);
  std::ostringstream cmd;
  // NVLink multicast stays off (the project's rule; the anchors were measured the same way).
  cmd << "NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 "
      << "timeout --kill-after=15 " << static_cast<long>(r.timeout_s) << " " << shell_quote(r.python)
      << " -m torch.distributed.run --standalone --nproc-per-node " << r.nproc << " " << shell_quote(script)
      << " --suite " << r.suite << " --shapes " << shell_quote(r.shapes) << " --dtypes " << shell_quote(r.dtypes)
      << " --modes " << shell_quote(r.modes) << " --b-layout " << r.b_layout << " --fast-accum " << (r.fast_accum ? 1 : 0)
      << " --check " << (r.check ? 1 : 0) << " --tol " << tol << " --tol-fast-accum " << tol_fast << " --iters " << r.iters << " --reps " << r.reps
      << " --out " << shell_quote(out_path);
  res.command = cmd.str();
  std::fflush(stdout);
  const int rc = run_shell(res.command, nullptr);
  std::ifstream f(out_path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("{\"meta\"", 0) == 0) {
      res.meta = line;
      continue;
    }
    FlatRow row;
    if (parse_flat_row(line, &row) && row.str.count("suite")) res.rows.push_back(std::move(row));
  }
  std::filesystem::remove(out_path, ec);
  if (res.rows.empty()) {
    res.why_not = rc == 124 || rc == 137 ? "the torch script ran past " + std::to_string(static_cast<long>(r.timeout_s)) + " s"
                                         : "the torch script wrote no rows (exit status " + std::to_string(rc) + ")";
    return res;
  }
  res.ran = true;
  if (rc != 0) res.why_not = "the torch script exited with status " + std::to_string(rc) + " after writing its rows";
  return res;
}

}  // namespace tpcomm::bench::atp
