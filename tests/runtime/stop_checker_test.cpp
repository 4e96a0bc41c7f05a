#include <gtest/gtest.h>

#include "runtime/stop_checker.h"

namespace tandem::runtime {
namespace {

// Pushes pieces; returns the emitted text and whether it stopped.
std::pair<std::string, bool> run(std::vector<std::string> stops, std::vector<std::string> pieces) {
  StopChecker c(std::move(stops));
  std::string out;
  for (const auto& p : pieces) {
    auto r = c.push(p);
    out += r.text;
    if (r.stopped) return {out, true};
  }
  return {out + c.flush(), false};
}

TEST(StopChecker, Table) {
  struct Case {
    std::vector<std::string> stops, pieces;
    std::string text;
    bool stopped;
  };
  const std::vector<Case> cases = {
      {{}, {"a", "b"}, "ab", false},
      {{"o W"}, {"Hel", "lo Wo", "rld"}, "Hell", true},
      {{"o W"}, {"Hello", " ", "World"}, "Hell", true},      // across three pieces
      {{"xyz"}, {"ab x", "y", "q"}, "ab xyq", false},         // a false start is released
      {{"END", "D"}, {"abEN", "D!"}, "ab", true},             // the earliest match wins
      {{"é!"}, {"caf\xC3", "\xA9", "!", "more"}, "caf", true},  // mid-character pieces
      {{"stop"}, {"sto"}, "sto", false},                      // held text flushed at the end
  };
  for (const Case& c : cases) {
    const auto [text, stopped] = run(c.stops, c.pieces);
    EXPECT_EQ(text, c.text);
    EXPECT_EQ(stopped, c.stopped) << c.text;
  }
}

TEST(StopChecker, NothingAfterStop) {
  StopChecker c({"b"});
  EXPECT_TRUE(c.push("ab").stopped);
  EXPECT_EQ(c.push("more").text, "");
  EXPECT_EQ(c.flush(), "");
}

}  // namespace
}  // namespace tandem::runtime
