// A fake model for scheduler tests: the "sampled" token is a hash of the previous token and
// its position, so a request's output does not depend on batching, chunking or preemption,
// exactly like greedy decoding of a real model.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/scheduler.h"

namespace tandem::runtime::test {

inline int32_t fake_next_token(int32_t prev, size_t position) {
  uint64_t h = uint64_t(uint32_t(prev)) * 0x9E3779B97F4A7C15ull + position * 0xBF58476D1CE4E5B9ull;
  h ^= h >> 29;
  return int32_t(h % 1000) + 2;
}

// The output a request must end with, computed without any scheduler.
inline std::vector<int32_t> fake_expected_output(std::vector<int32_t> tokens, int32_t max_new) {
  const size_t prompt = tokens.size();
  while (tokens.size() < prompt + size_t(max_new)) {
    tokens.push_back(fake_next_token(tokens.back(), tokens.size()));
  }
  return {tokens.begin() + long(prompt), tokens.end()};
}

// Runs one step the way the engine does and finishes requests that reached max_new tokens.
// Returns the decision; `finished` collects (id, output) of requests that ended.
struct FakeDriver {
  Scheduler& scheduler;
  std::unordered_map<RequestId, int32_t> max_new;
  std::unordered_map<RequestId, std::vector<int32_t>> finished;

  Decision step() {
    Decision d = scheduler.schedule();
    std::vector<int32_t> next(d.seqs.size(), -1);
    for (size_t i = 0; i < d.seqs.size(); ++i) {
      const ScheduledSeq& s = d.seqs[i];
      const auto tokens = scheduler.tokens(s.id);
      TANDEM_CHECK(int64_t(scheduler.pages(s.id).size()) * scheduler.config().page_size >=
                       s.cached_len + s.num_tokens,
                   "request {} scheduled without pages for its tokens", s.id);
      if (s.sample) next[i] = fake_next_token(tokens.back(), tokens.size());
    }
    scheduler.complete(d, next);
    for (const ScheduledSeq& s : d.seqs) {
      if (!s.sample || scheduler.num_output_tokens(s.id) < max_new.at(s.id)) continue;
      const auto tokens = scheduler.tokens(s.id);
      finished[s.id] = {tokens.end() - max_new.at(s.id), tokens.end()};
      scheduler.finish(s.id);
    }
    return d;
  }
};

// "1:0+8 2:3+1*": id:cached+count per scheduled request, * when it samples.
inline std::string decision_string(const Decision& d) {
  std::string out;
  for (const ScheduledSeq& s : d.seqs) {
    if (!out.empty()) out += ' ';
    out += std::to_string(s.id) + ':' + std::to_string(s.cached_len) + '+' +
           std::to_string(s.num_tokens) + (s.sample ? "*" : "");
  }
  return out;
}

inline std::string ids_string(const std::vector<RequestId>& ids) {
  std::string out;
  for (const RequestId id : ids) out += (out.empty() ? "" : ",") + std::to_string(id);
  return out;
}

}  // namespace tandem::runtime::test
