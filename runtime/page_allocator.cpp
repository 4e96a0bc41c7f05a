#include "runtime/page_allocator.h"

#include "core/error.h"

namespace tandem::runtime {

PageAllocator::PageAllocator(int32_t num_pages) : num_pages_(num_pages) {
  TANDEM_CHECK(num_pages >= 1, "PageAllocator: need at least one page, got {}", num_pages);
  free_.reserve(size_t(num_pages));
  // Low ids on top of the stack, so a fresh pool hands out 0, 1, 2, ... (readable tests).
  for (int32_t p = num_pages - 1; p >= 0; --p) free_.push_back(p);
  is_free_.assign(size_t(num_pages), 1);
}

bool PageAllocator::alloc(int32_t n, std::vector<int32_t>& out) {
  if (n > num_free()) return false;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t p = free_.back();
    free_.pop_back();
    is_free_[size_t(p)] = 0;
    out.push_back(p);
  }
  return true;
}

void PageAllocator::free(int32_t page) {
  TANDEM_CHECK(page >= 0 && page < num_pages_, "PageAllocator: page {} outside [0, {})", page,
               num_pages_);
  TANDEM_CHECK(!is_free_[size_t(page)], "PageAllocator: page {} freed twice", page);
  is_free_[size_t(page)] = 1;
  free_.push_back(page);
}

void PageAllocator::free(const std::vector<int32_t>& pages, size_t begin) {
  for (size_t i = begin; i < pages.size(); ++i) free(pages[i]);
}

}  // namespace tandem::runtime
