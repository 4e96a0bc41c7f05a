#include "core/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace tandem {

namespace {
std::string human(double v, const std::string& unit) {
  if (unit != "B") return fmt::format("{:.0f}{}", v, unit.empty() ? "" : " " + unit);
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (v >= 1000.0 && u < 4) v /= 1000.0, ++u;
  return fmt::format("{:.1f} {}", v, units[u]);
}
}  // namespace

ProgressBar::ProgressBar(std::string label, uint64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total),
      tty_(isatty(fileno(stderr))), start_(std::chrono::steady_clock::now()), last_draw_() {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::advance(uint64_t amount) {
  done_ += amount;
  draw(false);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void ProgressBar::draw(bool final) {
  const auto now = std::chrono::steady_clock::now();
  const double pct = total_ ? 100.0 * double(done_) / double(total_) : 100.0;
  const double secs = std::chrono::duration<double>(now - start_).count();
  const std::string rate = secs > 0 ? human(double(done_) / secs, unit_) + "/s" : "";
  if (tty_) {
    if (!final && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const int width = 30, filled = int(pct / 100.0 * width);
    std::fprintf(stderr, "\r%s [%s%s] %5.1f%% %s / %s %s%s", label_.c_str(),
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), pct,
                 human(double(done_), unit_).c_str(), human(double(total_), unit_).c_str(),
                 rate.c_str(), final ? "\n" : "");
  } else {
    const int decile = int(pct / 10.0);
    if (!final && decile == last_decile_) return;
    if (final && last_decile_ == 10) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s %5.1f%% %s / %s %s\n", label_.c_str(), pct,
                 human(double(done_), unit_).c_str(), human(double(total_), unit_).c_str(),
                 rate.c_str());
  }
  std::fflush(stderr);
}

}  // namespace tandem
