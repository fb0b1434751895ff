// Property tests of the all-reduce host rules (src/collectives/all_reduce_select.cpp, all_reduce_loopback.cpp),
// CPU only, thousands of random cases each, every one checked against a model written here from
// tpcomm/all_reduce.h and all_reduce_args.h:
//   * argument checks: a call is accepted iff the model finds no fault; a rejection is
//     tpcomm::Error(kInvalidArgument) naming an argument at fault; count == 0 is a no-op whatever the pointers;
//   * selection: kAuto takes the first of copy-engine / barrier-free / one-shot / two-shot whose table limit and
//     workspace both hold the message, else NCCL; never an algorithm whose workspace cannot hold it; on a loopback
//     world never NCCL, and kUnsupported naming count exactly when no workspace holds the message;
//   * TPCOMM_AR_TABLE: random strings either parse to what a reference parser reads or throw kInvalidArgument
//     naming the variable.
// A failure prints the seed and the case index (TPCOMM_FUZZ_SEED replays the run; tests/common/fuzz_util.h).
#include <gtest/gtest.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "collectives/all_reduce_args.h"
#include "collectives/all_reduce_loopback.h"
#include "common/fuzz_util.h"
#include "common/test_util.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/error.h"

using namespace tpcomm;

namespace {

using Faults = std::set<std::string>;
using u128 = unsigned __int128;

struct Gen {
  test::SplitMix64 rng;
  explicit Gen(uint64_t seed) : rng(seed) {}
  uint64_t u(uint64_t n) { return rng.next() % n; }
  bool pct(int p) { return u(100) < static_cast<uint64_t>(p); }
};

// ---- argument checks ----------------------------------------------------------------------------------------------
struct ArCall {
  const void* input = nullptr;
  const void* output = nullptr;
  std::size_t count = 0;
  DType dtype = DType::kBFloat16;
  ReduceOp op = ReduceOp::kSum;
  AllReduceOptions o;
};

bool valid_dtype(DType d) { return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16; }
bool valid_wire(AllReduceWire w) { return w == AllReduceWire::kExact || w == AllReduceWire::kFp8; }
std::size_t esize(DType d) { return d == DType::kFloat32 ? 4 : 2; }

// The model: the arguments at fault; `runs` is set to whether an accepted call has work to do.
Faults model(const ArCall& c, bool& runs) {
  Faults f;
  runs = false;
  const bool dt_ok = valid_dtype(c.dtype);
  if (!dt_ok) f.insert("dtype");
  if (c.op != ReduceOp::kSum && c.op != ReduceOp::kMax && c.op != ReduceOp::kMin) f.insert("op");
  if (!valid_wire(c.o.wire)) f.insert("wire");
  if (c.o.wire == AllReduceWire::kFp8) {  // the FP8 wire's fields matter only when it is asked for
    if (c.o.algo != AllReduceAlgo::kTwoShot && c.o.algo != AllReduceAlgo::kAuto) f.insert("wire");
    if (c.o.fp8_block != 32 && c.o.fp8_block != 128) f.insert("fp8_block");
    if (!valid_wire(c.o.gather_wire)) f.insert("gather_wire");
  }
  if (c.count == 0 || !dt_ok) return f;  // count 0: nothing to do, pointers not looked at
  const std::size_t es = esize(c.dtype);
  const uintptr_t in = reinterpret_cast<uintptr_t>(c.input), out = reinterpret_cast<uintptr_t>(c.output);
  if (c.input == nullptr || in % es != 0) f.insert("input");
  if (c.output == nullptr || out % es != 0) f.insert("output");
  const u128 bytes = static_cast<u128>(c.count) * es;
  if (bytes > SIZE_MAX) {
    f.insert("count");
    return f;
  }
  // In place is output == input; any other sharing of bytes is a fault.
  if (c.input && c.output && in != out && in < out + bytes && out < in + bytes) f.insert("output"), f.insert("input");
  if (c.o.zero_copy) {
    if (c.o.algo != AllReduceAlgo::kOneShot) f.insert("zero_copy");
    if (c.input && in == out) f.insert("output");
    if (in % 16 != 0) f.insert("input");
  }
  runs = f.empty();
  return f;
}

std::string describe(const ArCall& c) {
  char b[400];
  std::snprintf(b, sizeof b,
                "check_all_reduce_args{input 0x%llx output 0x%llx count %llu dtype %d op %d algo %d zero_copy %d wire %d"
                " fp8_block %d gather_wire %d}",
                static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(c.input)),
                static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(c.output)),
                static_cast<unsigned long long>(c.count), static_cast<int>(c.dtype), static_cast<int>(c.op),
                static_cast<int>(c.o.algo), static_cast<int>(c.o.zero_copy), static_cast<int>(c.o.wire),
                c.o.fp8_block, static_cast<int>(c.o.gather_wire));
  return b;
}

// Counts: mostly messages a GPU holds (up to 2^48 elements), sometimes 0, or past the overflow of a byte count.
// Pointers below 2^52 keep pointer + bytes inside the address space: counts whose bytes fit size_t but whose
// buffers would wrap past 2^64 are not generated (check_all_reduce_args does not look for them).
ArCall gen_call(Gen& g) {
  ArCall c;
  c.dtype = g.pct(94) ? static_cast<DType>(g.u(3)) : static_cast<DType>(g.pct(80) ? 3 + g.u(4) : 99);
  c.op = g.pct(95) ? static_cast<ReduceOp>(g.u(3)) : static_cast<ReduceOp>(g.pct(50) ? 3 : -1);
  const std::size_t es = valid_dtype(c.dtype) ? esize(c.dtype) : 2;
  const uint64_t cr = g.u(100);
  if (cr < 8) c.count = 0;
  else if (cr < 70) c.count = 1 + g.u(4096);
  else if (cr < 92) c.count = 1 + (g.rng.next() >> (16 + g.u(20)));  // up to 2^48
  else if (cr < 96) c.count = SIZE_MAX / es + 1 + g.u(3);              // just past the overflow of a byte count
  else c.count = SIZE_MAX - g.u(8);
  const uint64_t nominal = c.count <= (uint64_t(1) << 48) ? c.count * es : 4096;
  const uintptr_t in = (uintptr_t(1) << 50) + 256 * g.u(1 << 20);
  c.input = reinterpret_cast<const void*>(in);
  const uint64_t pr = g.u(100);
  uintptr_t out;
  if (pr < 45) out = (uintptr_t(2) << 50) + 256 * g.u(1 << 20);                     // elsewhere
  else if (pr < 65) out = in;                                                         // in place
  else if (pr < 80) out = in + es * (1 + g.u(std::max<uint64_t>(1, nominal / es)));  // into or just after it
  else if (pr < 88) out = in - es * (1 + g.u(std::max<uint64_t>(1, nominal / es)));  // just before or into it
  else out = (uintptr_t(3) << 50) + g.u(64);                                          // any alignment
  c.output = reinterpret_cast<const void*>(out);
  if (g.pct(6)) c.input = reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(c.input) + 1 + g.u(15));
  if (g.pct(4)) c.input = nullptr;
  if (g.pct(4)) c.output = nullptr;
  static const AllReduceAlgo algos[] = {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot,
                                        AllReduceAlgo::kTwoShot, AllReduceAlgo::kNccl, AllReduceAlgo::kOneShotCE};
  c.o.algo = algos[g.u(6)];
  c.o.zero_copy = g.pct(20);
  if (c.o.zero_copy && g.pct(60)) c.o.algo = AllReduceAlgo::kOneShot;
  if (g.pct(25)) {
    c.o.wire = g.pct(92) ? AllReduceWire::kFp8 : static_cast<AllReduceWire>(2 + g.u(5));
    if (g.pct(60)) c.o.algo = g.pct(50) ? AllReduceAlgo::kTwoShot : AllReduceAlgo::kAuto;
  }
  static const int blocks[] = {128, 32, 128, 32, 0, 64, -1, 256};
  c.o.fp8_block = blocks[g.u(8)];
  c.o.gather_wire = g.pct(95) ? static_cast<AllReduceWire>(g.u(2)) : static_cast<AllReduceWire>(7);
  return c;
}

TEST(AllReduceArgsFuzz, AcceptedIffNoFaultAndErrorsNameAnArgumentAtFault) {
  const uint64_t seed = test::fuzz_seed();
  const int64_t n = test::fuzz_cases(50000);
  test::FuzzTally tally;
  int64_t noop_cases = 0;
  for (int64_t i = 0; i < n; ++i) {
    Gen g(seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1)));
    const ArCall c = gen_call(g);
    bool runs = false;
    const Faults f = model(c, runs);
    bool got = false;
    test::check_case(
        [&] { got = detail::check_all_reduce_args(c.input, c.output, c.count, c.dtype, c.op, c.o); }, f, seed, i,
        [&] { return describe(c); }, tally);
    // Accepted: true exactly when there is work (count > 0); count 0 returns false.
    if (f.empty() && got != runs) {
      ADD_FAILURE() << "returned " << got << ", expected " << runs << "\n  case " << i << " of TPCOMM_FUZZ_SEED=" << seed
                    << ": " << describe(c);
    }
    if (f.empty() && !runs) ++noop_cases;
  }
  test::expect_both_outcomes(tally, "check_all_reduce_args");
  EXPECT_GT(noop_cases, 0) << "no count == 0 case was generated";
}

// ---- selection ----------------------------------------------------------------------------------------------------
std::size_t rand_size(Gen& g) {
  const uint64_t r = g.u(100);
  if (r < 10) return 0;
  if (r < 85) return static_cast<std::size_t>(1) << g.u(31);  // powers of two, 1 B .. 1 GiB
  if (r < 95) return static_cast<std::size_t>(g.rng.next() >> (24 + g.u(30)));
  return SIZE_MAX - g.u(4);
}

struct SelCase {
  AllReduceTable t;
  std::size_t bytes, ll, one, two, ce;
  bool fast;
};

SelCase gen_sel(Gen& g) {
  SelCase s;
  s.t.one_shot_ll_max = rand_size(g);
  s.t.one_shot_max = rand_size(g);
  s.t.two_shot_max = rand_size(g);
  s.t.copy_engine_min = g.pct(60) ? 0 : rand_size(g);
  s.t.source = "fuzz";
  s.ll = rand_size(g);
  s.one = rand_size(g);
  s.two = rand_size(g);
  s.ce = g.pct(50) ? 0 : rand_size(g);
  s.fast = g.pct(85);
  // The message: near one of the limits (the interesting places) or anywhere.
  const std::size_t edges[] = {s.t.one_shot_ll_max, s.t.one_shot_max, s.t.two_shot_max, s.t.copy_engine_min,
                               s.ll, s.one, s.two, s.ce};
  const std::size_t e = edges[g.u(8)];
  s.bytes = g.pct(70) ? e + static_cast<std::size_t>(g.u(3)) - 1 : rand_size(g);
  return s;
}

// The priority rule of tpcomm/all_reduce.h: copy engine from its threshold up within its workspace, then the
// first of barrier-free, one-shot, two-shot whose table limit and workspace both hold the message, else NCCL.
AllReduceAlgo model_select(const SelCase& s) {
  if (!s.fast) return AllReduceAlgo::kNccl;
  if (s.t.copy_engine_min != 0 && s.bytes >= s.t.copy_engine_min && s.bytes <= s.ce) return AllReduceAlgo::kOneShotCE;
  if (s.bytes <= s.t.one_shot_ll_max && s.bytes <= s.ll) return AllReduceAlgo::kOneShotLL;
  if (s.bytes <= s.t.one_shot_max && s.bytes <= s.one) return AllReduceAlgo::kOneShot;
  if (s.bytes <= s.t.two_shot_max && s.bytes <= s.two) return AllReduceAlgo::kTwoShot;
  return AllReduceAlgo::kNccl;
}

std::size_t cap_for(const SelCase& s, AllReduceAlgo a) {
  switch (a) {
    case AllReduceAlgo::kOneShotLL: return s.ll;
    case AllReduceAlgo::kOneShot: return s.one;
    case AllReduceAlgo::kTwoShot: return s.two;
    case AllReduceAlgo::kOneShotCE: return s.ce;
    default: return SIZE_MAX;
  }
}

std::string describe(const SelCase& s) {
  char b[400];
  std::snprintf(b, sizeof b,
                "bytes %zu fast %d table{ll %zu one %zu two %zu ce_min %zu} caps{ll %zu one %zu two %zu ce %zu}",
                s.bytes, static_cast<int>(s.fast), s.t.one_shot_ll_max, s.t.one_shot_max, s.t.two_shot_max,
                s.t.copy_engine_min, s.ll, s.one, s.two, s.ce);
  return b;
}

TEST(AllReduceSelectFuzz, FirstFittingAlgorithmNeverBeyondItsWorkspace) {
  const uint64_t seed = test::fuzz_seed();
  const int64_t n = test::fuzz_cases(50000);
  std::set<AllReduceAlgo> seen;
  int failures = 0;
  for (int64_t i = 0; i < n && failures < 20; ++i) {
    Gen g(seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(i + 1)));
    const SelCase s = gen_sel(g);
    const AllReduceAlgo got = select_all_reduce(s.t, s.bytes, s.fast, s.ll, s.one, s.two, s.ce);
    seen.insert(got);
    const AllReduceAlgo want = model_select(s);
    if (got != want || s.bytes > cap_for(s, got)) {
      ++failures;
      ADD_FAILURE() << "select_all_reduce gave " << all_reduce_algo_name(got) << ", the model "
                    << all_reduce_algo_name(want) << "\n  case " << i << " of TPCOMM_FUZZ_SEED=" << seed << ": "
                    << describe(s);
    }
  }
  EXPECT_EQ(seen.size(), 5u) << "not every algorithm was selected at least once";
  std::printf("[ fuzz     ] select_all_reduce: %lld cases, %zu algorithms chosen\n", static_cast<long long>(n),
              seen.size());
}

TEST(AllReduceSelectFuzz, LoopbackNeverNcclAndUnsupportedOnlyBeyondEveryWorkspace) {
  const uint64_t seed = test::fuzz_seed();
  const int64_t n = test::fuzz_cases(50000);
  int64_t unsupported = 0;
  int failures = 0;
  for (int64_t i = 0; i < n && failures < 20; ++i) {
    Gen g(seed ^ (0x8CB92BA72F3D8DD7ull * static_cast<uint64_t>(i + 1)));
    SelCase s = gen_sel(g);
    s.fast = true;
    const AllReduceAlgo table = model_select(s);
    const bool fits = s.bytes <= s.two || s.bytes <= s.one || s.bytes <= s.ll;
    std::string problem;
    try {
      const AllReduceAlgo got = detail::select_all_reduce_loopback(s.t, s.bytes, s.ll, s.one, s.two, s.ce);
      if (got == AllReduceAlgo::kNccl) problem = "picked NCCL";
      else if (s.bytes > cap_for(s, got)) problem = std::string("picked ") + all_reduce_algo_name(got) + " beyond its workspace";
      else if (table != AllReduceAlgo::kNccl && got != table)
        problem = std::string("picked ") + all_reduce_algo_name(got) + " where the table picks " +
                  all_reduce_algo_name(table);
      else if (table == AllReduceAlgo::kNccl && !fits) problem = "ran a message no workspace holds";
      else if (table == AllReduceAlgo::kNccl &&
               got != (s.bytes <= s.two ? AllReduceAlgo::kTwoShot
                                        : s.bytes <= s.one ? AllReduceAlgo::kOneShot : AllReduceAlgo::kOneShotLL))
        problem = std::string("picked ") + all_reduce_algo_name(got) +
                  ", not the first of two_shot, one_shot, one_shot_ll whose workspace holds the message";
    } catch (const Error& e) {
      ++unsupported;
      if (e.code() != ErrorCode::kUnsupported || test::named_argument(e) != "count")
        problem = std::string("threw ") + e.what();
      else if (table != AllReduceAlgo::kNccl || fits)
        problem = std::string("threw although an algorithm holds the message: ") + e.what();
    }
    if (!problem.empty()) {
      ++failures;
      ADD_FAILURE() << problem << "\n  case " << i << " of TPCOMM_FUZZ_SEED=" << seed << ": " << describe(s);
    }
  }
  EXPECT_GT(unsupported, 0) << "no case beyond every workspace was generated";
  EXPECT_LT(unsupported, n) << "every case was beyond every workspace";
}

// ---- TPCOMM_AR_TABLE ----------------------------------------------------------------------------------------------
// Reference reading of the variable (tpcomm/all_reduce.h: "ll=512K,one=2M,two=64M", keys ll one two ce, sizes in
// bytes with an optional K/M/G suffix, items separated by commas; a trailing comma ends the list). Numbers the
// generator makes have at most 6 digits, so no size overflows.
std::optional<AllReduceTable> reference_parse(const std::string& v, AllReduceTable t) {
  std::size_t start = 0;
  while (start < v.size()) {
    std::size_t end = v.find(',', start);
    const std::string item = v.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos) return std::nullopt;
    const std::string key = item.substr(0, eq), val = item.substr(eq + 1);
    std::size_t i = 0;
    while (i < val.size() && std::isdigit(static_cast<unsigned char>(val[i]))) ++i;
    if (i == 0) return std::nullopt;
    std::size_t x = std::stoull(val.substr(0, i));
    const std::string suf = val.substr(i);
    if (suf == "K" || suf == "k") x <<= 10;
    else if (suf == "M" || suf == "m") x <<= 20;
    else if (suf == "G" || suf == "g") x <<= 30;
    else if (!suf.empty()) return std::nullopt;
    if (key == "ll") t.one_shot_ll_max = x;
    else if (key == "one") t.one_shot_max = x;
    else if (key == "two") t.two_shot_max = x;
    else if (key == "ce") t.copy_engine_min = x;
    else return std::nullopt;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  t.source = "env:TPCOMM_AR_TABLE";
  return t;
}

std::string gen_table_string(Gen& g) {
  static const char* const keys[] = {"ll", "one", "two", "ce", "three", "", "LL", "l"};
  static const char* const sufs[] = {"", "K", "M", "G", "k", "m", "g", "Q", "KB", "x"};
  std::string s;
  const int items = static_cast<int>(g.u(5));
  for (int i = 0; i < items; ++i) {
    if (i) s += g.pct(97) ? "," : (g.pct(50) ? ";" : ",,");
    s += keys[g.pct(85) ? g.u(4) : 4 + g.u(4)];
    if (g.pct(96)) s += "=";
    if (g.pct(96)) s += std::to_string(g.u(1000000));
    s += sufs[g.pct(85) ? g.u(7) : 7 + g.u(3)];
  }
  if (g.pct(5)) s += ",";
  if (g.pct(3)) {  // one stray printable character (not a sign or a blank: strtoull would take those)
    static const std::string stray = "abcxyzKMG=,;:._/#0123456789()";
    s.insert(g.u(s.size() + 1), 1, stray[g.u(stray.size())]);
  }
  return s;
}

TEST(AllReduceTableFuzz, ParsesLikeTheReferenceOrNamesTheVariable) {
  const uint64_t seed = test::fuzz_seed();
  const int64_t n = test::fuzz_cases(20000);
  int64_t accepted = 0, rejected = 0;
  int failures = 0;
  for (int w : {2, 4, 8}) {
    unsetenv("TPCOMM_AR_TABLE");
    const AllReduceTable builtin = default_all_reduce_table(w);
    for (int64_t i = 0; i < n / 3 && failures < 20; ++i) {
      Gen g(seed ^ (0x94D049BB133111EBull * static_cast<uint64_t>(i + 1 + w * n)));
      const std::string v = gen_table_string(g);
      setenv("TPCOMM_AR_TABLE", v.c_str(), 1);
      const auto want = reference_parse(v, builtin);
      std::string problem;
      try {
        const AllReduceTable t = default_all_reduce_table(w);
        ++accepted;
        if (!want) problem = "accepted";
        else if (t.one_shot_ll_max != want->one_shot_ll_max || t.one_shot_max != want->one_shot_max ||
                 t.two_shot_max != want->two_shot_max || t.copy_engine_min != want->copy_engine_min ||
                 t.source != want->source)
          problem = "read other values than the reference";
      } catch (const Error& e) {
        ++rejected;
        if (e.code() != ErrorCode::kInvalidArgument || test::named_argument(e) != "TPCOMM_AR_TABLE")
          problem = std::string("threw ") + e.what();
        else if (want)
          problem = std::string("rejected a valid value: ") + e.what();
      } catch (const std::exception& e) {
        ++rejected;
        problem = std::string("threw a non-tpcomm exception: ") + e.what();
      }
      if (!problem.empty()) {
        ++failures;
        ADD_FAILURE() << problem << "\n  case " << i << " (W=" << w << ") of TPCOMM_FUZZ_SEED=" << seed
                      << ": TPCOMM_AR_TABLE='" << v << "'";
      }
    }
  }
  unsetenv("TPCOMM_AR_TABLE");
  EXPECT_GT(accepted, n / 50);
  EXPECT_GT(rejected, n / 50);
  std::printf("[ fuzz     ] TPCOMM_AR_TABLE: %lld strings, %lld accepted, %lld rejected\n",
              static_cast<long long>(accepted + rejected), static_cast<long long>(accepted),
              static_cast<long long>(rejected));
}

}  // namespace
