#include "runtime/stop_checker.h"

#include <algorithm>

namespace tandem::runtime {

StopChecker::Result StopChecker::push(std::string_view piece) {
  Result r;
  if (stopped_) return r;
  held_.append(piece);
  if (stops_.empty()) {
    r.text = std::move(held_);
    held_.clear();
    return r;
  }
  // The earliest stop string wins (held_ has no complete one from earlier pushes).
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    r.text = held_.substr(0, first);
    r.stopped = stopped_ = true;
    held_.clear();
    return r;
  }
  // Hold the longest tail that is a proper prefix of some stop string. Such a tail starts on a
  // UTF-8 character boundary, since a stop string does.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > keep; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        keep = len;
        break;
      }
    }
  }
  r.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return r;
}

std::string StopChecker::flush() {
  std::string out = std::move(held_);
  held_.clear();
  return out;
}

}  // namespace tandem::runtime
