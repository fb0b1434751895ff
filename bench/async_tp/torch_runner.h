// Runs bench/async_tp/torch_symm_mem.py (PyTorch's fused async-TP ops) through torch.distributed.run, one process
// per GPU, and reads back its rows (JSON lines, one flat object per line).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace tpcomm::bench::atp {

// A flat JSON object (string, number, true/false/null values) as written by the script, keys in order.
struct FlatRow {
  std::string raw;                                 // the object's text, re-emitted as is
  std::map<std::string, std::string> str;          // string values
  std::map<std::string, double> num;               // number values
  std::map<std::string, bool> boolean;             // true/false values
  std::map<std::string, bool> null;                // keys whose value is null
  bool has(const std::string& k) const { return str.count(k) || num.count(k) || boolean.count(k) || null.count(k); }
};
// Parses one line; false when it is not a flat object.
bool parse_flat_row(const std::string& line, FlatRow* out);

struct TorchRun {
  std::string suite;          // ag_gemm | gemm_rs
  int nproc = 2;
  std::string shapes;         // "MxKxN,..."
  std::string dtypes;         // "bf16,..."
  std::string modes;          // "graph,eager"
  std::string b_layout = "nk";
  bool fast_accum = true;
  bool check = true;
  double tol = 1e-2;
  double tol_fast = 3e-2;
  int iters = 0, reps = 10;
  std::string python;         // interpreter
  std::string script;         // path of torch_symm_mem.py ("" = next to this source file, then ./bench/async_tp)
  double timeout_s = 900;
};

struct TorchResult {
  bool ran = false;
  std::string why_not;          // when !ran: the reason every torch row is "skipped"
  std::vector<FlatRow> rows;
  std::string meta;             // the script's {"meta": ...} line, if any
  std::string command;
};

// Where the script is: `given` if non-empty, else beside this source file, else ./bench/async_tp/.
std::string find_torch_script(const std::string& given);
// Whether `python` can import torch with CUDA and see >= nproc GPUs; empty when yes, else why not.
std::string torch_unavailable(const std::string& python, int nproc);
TorchResult run_torch(const TorchRun& r);

}  // namespace tpcomm::bench::atp
