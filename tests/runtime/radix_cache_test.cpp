// Radix prefix cache: matches are token-exact and page-aligned, splits keep locks valid,
// eviction is LRU over unlocked leaves only, and the page counters stay exact.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "core/error.h"
#include "runtime/radix_cache.h"

namespace tandem::runtime {
namespace {

std::vector<int32_t> alloc(PageAllocator& a, int32_t n) {
  std::vector<int32_t> pages;
  EXPECT_TRUE(a.alloc(n, pages));
  return pages;
}

TEST(PageAllocator, AllOrNothingAndDoubleFreeCaught) {
  PageAllocator a(4);
  std::vector<int32_t> pages;
  EXPECT_TRUE(a.alloc(3, pages));
  EXPECT_EQ(pages, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_FALSE(a.alloc(2, pages));
  EXPECT_EQ(pages.size(), 3u);
  a.free(1);
  EXPECT_THROW(a.free(1), tandem::Error);
  EXPECT_THROW(a.free(9), tandem::Error);
  EXPECT_EQ(a.num_free(), 2);
}

TEST(RadixCache, MatchIsPageAlignedAndTokenExact) {
  PageAllocator a(16);
  RadixCache c(2, a);
  const std::vector<int32_t> t = {1, 2, 3, 4, 5, 6};
  std::vector<int32_t> pages = alloc(a, 3);
  RadixCache::Node* n = c.insert(c.root(), t, pages);
  EXPECT_EQ(c.total_pages(), 3);
  // Whole pages only: 5 matching tokens give 2 pages.
  auto m = c.match(std::vector<int32_t>{1, 2, 3, 4, 5, 9});
  EXPECT_EQ(m.pages, (std::vector<int32_t>{pages[0], pages[1]}));
  // A token differing inside the first page matches nothing.
  EXPECT_TRUE(c.match(std::vector<int32_t>{1, 7, 3, 4}).pages.empty());
  // The partial match split the node; the original node still names the full prefix.
  m = c.match(t);
  EXPECT_EQ(m.pages, pages);
  EXPECT_EQ(m.node, n);
  c.check_invariants();
}

TEST(RadixCache, InsertKeepsTreePagesAndFreesDuplicates) {
  PageAllocator a(16);
  RadixCache c(2, a);
  std::vector<int32_t> first = alloc(a, 2);
  c.insert(c.root(), std::vector<int32_t>{1, 2, 3, 4}, first);
  std::vector<int32_t> second = alloc(a, 3);
  const int32_t dup0 = second[0], dup1 = second[1];
  c.insert(c.root(), std::vector<int32_t>{1, 2, 3, 4, 5, 6}, second);
  EXPECT_EQ(second[0], first[0]);
  EXPECT_EQ(second[1], first[1]);
  EXPECT_TRUE(a.is_free(dup0) && a.is_free(dup1));
  EXPECT_EQ(c.total_pages(), 3);
  EXPECT_EQ(a.num_free() + c.total_pages(), 16);
  c.check_invariants();
}

TEST(RadixCache, LockedPagesSurviveEvictionAndLruOrderHolds) {
  PageAllocator a(16);
  RadixCache c(1, a);
  std::vector<int32_t> pa = alloc(a, 2), pb = alloc(a, 2), pc = alloc(a, 2);
  RadixCache::Node* na = c.insert(c.root(), std::vector<int32_t>{1, 2}, pa);
  c.insert(c.root(), std::vector<int32_t>{3, 4}, pb);
  c.insert(c.root(), std::vector<int32_t>{5, 6}, pc);
  c.match(std::vector<int32_t>{3, 4});  // b is now the most recent
  c.lock(na);
  EXPECT_EQ(c.evictable_pages(), 4);
  EXPECT_EQ(c.evict(1), 2);  // c, the least recent unlocked leaf, goes whole
  EXPECT_TRUE(c.match(std::vector<int32_t>{5, 6}).pages.empty());
  EXPECT_EQ(c.match(std::vector<int32_t>{3, 4}).pages, pb);
  EXPECT_EQ(c.evict(100), 2);  // b; a is locked
  EXPECT_EQ(c.match(std::vector<int32_t>{1, 2}).pages, pa);
  c.unlock(na);
  EXPECT_EQ(c.evict(100), 2);
  EXPECT_EQ(c.total_pages(), 0);
  EXPECT_EQ(a.num_free(), 16);
  c.check_invariants();
}

TEST(RadixCache, RandomInsertMatchEvictKeepsCountersExact) {
  std::mt19937 rng(7);
  for (const int32_t ps : {1, 3, 8}) {
    PageAllocator a(400);
    RadixCache c(ps, a);
    std::vector<std::vector<int32_t>> inserted;
    for (int it = 0; it < 2000; ++it) {
      std::vector<int32_t> t;
      if (!inserted.empty() && rng() % 2) t = inserted[rng() % inserted.size()];
      t.resize(t.size() / 2);
      while (t.size() % size_t(ps) != 0 || t.size() < size_t(ps) * (1 + rng() % 6)) {
        t.push_back(int32_t(rng() % 4));
      }
      const auto m = c.match(t);
      // Token-exact: the matched prefix is one that was inserted.
      bool found = m.pages.empty();
      for (const auto& prev : inserted) {
        const size_t len = m.pages.size() * size_t(ps);
        if (prev.size() >= len && std::equal(t.begin(), t.begin() + long(len), prev.begin())) found = true;
      }
      ASSERT_TRUE(found);
      const int32_t need = int32_t(t.size()) / ps;
      if (a.num_free() < need) c.evict(need - a.num_free());
      if (a.num_free() < need) continue;
      std::vector<int32_t> pages = alloc(a, need);
      c.insert(c.root(), t, pages);
      inserted.push_back(t);
      ASSERT_EQ(c.match(t).pages, pages);
      ASSERT_EQ(a.num_free() + c.total_pages(), 400);
      c.check_invariants();
    }
  }
}

}  // namespace
}  // namespace tandem::runtime
