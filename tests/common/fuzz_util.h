// Helpers of the property ("fuzz") tests of the host validators (tests/**/*_fuzz_test.cpp): run-wide seed and case
// count from the environment, the argument an Error names, and the check of one case against a model's verdict.
//
//   TPCOMM_FUZZ_SEED=<n|0xhex>  replays a run (every failure prints the seed and the case index)
//   TPCOMM_FUZZ_CASES=<n>       cases per test (default: each test's own, a few thousand to tens of thousands)
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <set>
#include <string>

#include "common/test_util.h"
#include "tpcomm/error.h"

namespace tpcomm::test {

inline uint64_t fuzz_seed() {
  const char* e = std::getenv("TPCOMM_FUZZ_SEED");
  if (e != nullptr && e[0] != '\0') return std::strtoull(e, nullptr, 0);
  return fresh_seed();
}

inline int64_t fuzz_cases(int64_t def) {
  const char* e = std::getenv("TPCOMM_FUZZ_CASES");
  if (e != nullptr && e[0] != '\0') {
    const long long v = std::strtoll(e, nullptr, 0);
    if (v > 0) return v;
  }
  return def;
}

// Error::what() is "<code name>: <argument>: <reason>"; returns <argument> ("" when what() has another form).
inline std::string named_argument(const Error& e) {
  const std::string w = e.what();
  const std::string prefix = std::string(error_code_name(e.code())) + ": ";
  if (w.rfind(prefix, 0) != 0) return "";
  const std::size_t end = w.find(": ", prefix.size());
  if (end == std::string::npos) return "";
  return w.substr(prefix.size(), end - prefix.size());
}

// Outcome counts of one fuzz test: accepted cases, and rejected ones by the argument named.
struct FuzzTally {
  int64_t cases = 0, accepted = 0, rejected = 0, failures = 0;
  std::map<std::string, int64_t> named;

  std::string summary() const {
    std::string s = std::to_string(cases) + " cases, " + std::to_string(accepted) + " accepted, " +
                    std::to_string(rejected) + " rejected (";
    bool first = true;
    for (const auto& [k, v] : named) {
      s += (first ? "" : ", ") + k + " " + std::to_string(v);
      first = false;
    }
    return s + ")";
  }
};

// Runs one validator call and checks it against the model's verdict `faults` (the arguments at fault; empty: the
// call must be accepted). A rejection must be a tpcomm::Error(kInvalidArgument) whose message names one of the
// faults; an acceptance must have no fault; anything else thrown is a failure. `describe` renders the case for the
// failure message, with the seed and the case index that replay it. Stops reporting after 20 failures per test.
template <class Call, class Describe>
void check_case(Call&& call, const std::set<std::string>& faults, uint64_t seed, int64_t index, Describe&& describe,
                FuzzTally& tally) {
  ++tally.cases;
  std::string problem;
  try {
    call();
    ++tally.accepted;
    if (!faults.empty()) {
      problem = "accepted, but the model finds fault(s):";
      for (const auto& f : faults) problem += " " + f;
    }
  } catch (const Error& e) {
    ++tally.rejected;
    const std::string name = named_argument(e);
    ++tally.named[name.empty() ? "<unnamed>" : name];
    if (e.code() != ErrorCode::kInvalidArgument) {
      problem = std::string("rejected with code ") + error_code_name(e.code()) + ": " + e.what();
    } else if (faults.count(name) == 0) {
      problem = std::string("rejected naming '") + name + "' (" + e.what() + "); the model's faults:";
      if (faults.empty()) problem += " none";
      for (const auto& f : faults) problem += " " + f;
    }
  } catch (const std::exception& e) {
    ++tally.rejected;
    problem = std::string("threw a non-tpcomm exception: ") + e.what();
  } catch (...) {
    ++tally.rejected;
    problem = "threw an unknown exception";
  }
  if (problem.empty()) return;
  if (++tally.failures <= 20) {
    char s[64];
    std::snprintf(s, sizeof s, "0x%llx", static_cast<unsigned long long>(seed));
    ADD_FAILURE() << problem << "\n  case " << index << " of TPCOMM_FUZZ_SEED=" << s << ": " << describe();
  }
}

// Every test asserts both outcomes were exercised, so a generator gone wrong cannot pass by testing nothing.
inline void expect_both_outcomes(const FuzzTally& t, const std::string& what) {
  EXPECT_GE(t.accepted * 50, t.cases) << what << ": fewer than 2% of the cases were valid: " << t.summary();
  EXPECT_GE(t.rejected * 50, t.cases) << what << ": fewer than 2% of the cases were invalid: " << t.summary();
  std::printf("[ fuzz     ] %s: %s\n", what.c_str(), t.summary().c_str());
}

}  // namespace tpcomm::test
