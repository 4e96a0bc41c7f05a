// PageAllocator: the free list of KV cache page ids [0, num_pages). Pure bookkeeping (no device
// memory); the runner's KvCache holds the pages themselves. Not thread-safe: the scheduler
// thread owns it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tandem::runtime {

class PageAllocator {
 public:
  explicit PageAllocator(int32_t num_pages);

  // Appends `n` page ids to `out` and returns true, or changes nothing and returns false when
  // fewer than `n` are free (all or nothing, so a failed step leaks nothing).
  bool alloc(int32_t n, std::vector<int32_t>& out);
  void free(int32_t page);
  void free(const std::vector<int32_t>& pages, size_t begin = 0);

  int32_t num_free() const { return int32_t(free_.size()); }
  bool is_free(int32_t page) const { return is_free_[size_t(page)] != 0; }
  int32_t num_pages() const { return num_pages_; }

 private:
  int32_t num_pages_;
  std::vector<int32_t> free_;     // stack: the most recently freed page is reused first
  std::vector<uint8_t> is_free_;  // catches double frees, which would corrupt another's KV
};

}  // namespace tandem::runtime
