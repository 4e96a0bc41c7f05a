// A progress bar for long loads on stderr: redrawn in place on a terminal, a log line every
// 10% otherwise (so CI logs stay readable). Not thread-safe: one owner updates it.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace tandem {

class ProgressBar {
 public:
  ProgressBar(std::string label, uint64_t total, std::string unit = "B");
  ~ProgressBar();
  void advance(uint64_t amount);
  void finish();

 private:
  void draw(bool final);
  std::string label_, unit_;
  uint64_t total_, done_ = 0;
  int last_decile_ = -1;
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace tandem
