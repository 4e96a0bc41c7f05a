// StopChecker: finds stop strings in streamed text even when one spans several tokens. Text
// that could still be the start of a stop string is held back, so nothing after a stop string
// is ever emitted; the text of a stopped request ends right before the stop string (OpenAI).
// Not thread-safe: one per request.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tandem::runtime {

class StopChecker {
 public:
  explicit StopChecker(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  struct Result {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string completed; `text` ends before it
  };
  // Adds newly decoded text. After a stop, everything is dropped.
  Result push(std::string_view piece);
  // The stream ended: the held-back text (none after a stop).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // not yet emitted: always shorter than the longest stop string
  bool stopped_ = false;
};

}  // namespace tandem::runtime
