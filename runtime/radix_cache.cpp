#include "runtime/radix_cache.h"


#include "core/error.h"

namespace tandem::runtime {

RadixCache::RadixCache(int32_t page_size, PageAllocator& allocator)
    : page_size_(page_size), allocator_(allocator), root_(std::make_unique<Node>()) {
  TANDEM_CHECK(page_size >= 1, "RadixCache: page size must be positive, got {}", page_size);
  root_->lock_ref = 1;  // the root is never evicted
}

RadixCache::~RadixCache() = default;

void RadixCache::refresh(Node* n) {
  const bool want = n != root_.get() && n->children.empty() && n->lock_ref == 0;
  if (n->in_lru && (!want || n->lru_key != n->last_access)) {
    lru_.erase({n->lru_key, n});
    n->in_lru = false;
  }
  if (want && !n->in_lru) {
    lru_.emplace(n->last_access, n);
    n->lru_key = n->last_access;
    n->in_lru = true;
  }
}

void RadixCache::touch(Node* n, uint64_t now) {
  n->last_access = now;
  refresh(n);
}

RadixCache::Node* RadixCache::find_child(Node* node, std::span<const int32_t> tokens) const {
  if (tokens.size() < size_t(page_size_)) return nullptr;
  auto it = node->children.find(tokens.first(size_t(page_size_)));
  return it == node->children.end() ? nullptr : it->second.get();
}

// Splits `child` after `keep_pages` pages: a new node takes the first part and becomes the
// parent of `child`, which keeps the rest (and its identity, so locks held on it stay valid).
RadixCache::Node* RadixCache::split(Node* child, size_t keep_pages) {
  const size_t keep_tokens = keep_pages * size_t(page_size_);
  Node* parent = child->parent;
  auto it = parent->children.find(std::span<const int32_t>(child->tokens).first(size_t(page_size_)));
  std::unique_ptr<Node> owned_child = std::move(it->second);
  auto upper = std::make_unique<Node>();
  upper->parent = parent;
  upper->tokens.assign(child->tokens.begin(), child->tokens.begin() + long(keep_tokens));
  upper->pages.assign(child->pages.begin(), child->pages.begin() + long(keep_pages));
  upper->lock_ref = child->lock_ref;  // every lock below passes through the new node
  upper->last_access = child->last_access;
  child->tokens.erase(child->tokens.begin(), child->tokens.begin() + long(keep_tokens));
  child->pages.erase(child->pages.begin(), child->pages.begin() + long(keep_pages));
  child->parent = upper.get();
  std::vector<int32_t> child_key(child->tokens.begin(), child->tokens.begin() + page_size_);
  upper->children.emplace(std::move(child_key), std::move(owned_child));
  Node* result = upper.get();
  it->second = std::move(upper);  // same first page, so the parent's key is unchanged
  return result;
}

RadixCache::Match RadixCache::match(std::span<const int32_t> tokens) {
  Match m{{}, root_.get()};
  const uint64_t now = ++clock_;
  size_t pos = 0;
  while (Node* child = find_child(m.node, tokens.subspan(pos))) {
    const size_t child_pages = child->pages.size();
    size_t k = 1;  // the first page matched through the key
    while (k < child_pages && pos + (k + 1) * size_t(page_size_) <= tokens.size() &&
           std::equal(child->tokens.begin() + long(k * page_size_),
                      child->tokens.begin() + long((k + 1) * page_size_),
                      tokens.begin() + long(pos + k * page_size_))) {
      ++k;
    }
    if (k < child_pages) child = split(child, k);
    m.pages.insert(m.pages.end(), child->pages.begin(), child->pages.end());
    touch(child, now);
    m.node = child;
    pos += k * size_t(page_size_);
    if (k < child_pages) break;
  }
  return m;
}

RadixCache::Node* RadixCache::insert(Node* from, std::span<const int32_t> tokens,
                                     std::span<int32_t> pages) {
  TANDEM_CHECK(tokens.size() == pages.size() * size_t(page_size_),
               "RadixCache::insert: {} tokens for {} pages of {}", tokens.size(), pages.size(),
               page_size_);
  const uint64_t now = ++clock_;
  Node* node = from;
  size_t page = 0;
  while (page < pages.size()) {
    const auto rest = tokens.subspan(page * size_t(page_size_));
    Node* child = find_child(node, rest);
    if (child == nullptr) {
      auto leaf = std::make_unique<Node>();
      leaf->parent = node;
      leaf->tokens.assign(rest.begin(), rest.end());
      leaf->pages.assign(pages.begin() + long(page), pages.end());
      leaf->last_access = now;
      total_pages_ += int32_t(leaf->pages.size());
      evictable_pages_ += int32_t(leaf->pages.size());
      std::vector<int32_t> key(rest.begin(), rest.begin() + page_size_);
      Node* raw = leaf.get();
      node->children.emplace(std::move(key), std::move(leaf));
      refresh(node);  // no longer a leaf
      refresh(raw);
      return raw;
    }
    size_t k = 1;
    while (k < child->pages.size() && page + k < pages.size() &&
           std::equal(child->tokens.begin() + long(k * page_size_),
                      child->tokens.begin() + long((k + 1) * page_size_),
                      rest.begin() + long(k * page_size_))) {
      ++k;
    }
    if (k < child->pages.size()) child = split(child, k);
    // The tree already holds these pages' KV: keep its copy, release the caller's duplicate.
    for (size_t i = 0; i < k; ++i) {
      if (pages[page + i] != child->pages[i]) {
        allocator_.free(pages[page + i]);
        pages[page + i] = child->pages[i];
      }
    }
    touch(child, now);
    node = child;
    page += k;
  }
  return node;
}

bool RadixCache::extendable(const Node* node) const {
  return node != root_.get() && node->children.empty() && node->lock_ref == 1;
}

void RadixCache::extend(Node* leaf, std::span<const int32_t> tokens,
                        std::span<const int32_t> pages) {
  TANDEM_CHECK(extendable(leaf), "RadixCache::extend: not a leaf held by one request");
  TANDEM_CHECK(tokens.size() == pages.size() * size_t(page_size_) && !pages.empty(),
               "RadixCache::extend: {} tokens for {} pages of {}", tokens.size(), pages.size(),
               page_size_);
  leaf->tokens.insert(leaf->tokens.end(), tokens.begin(), tokens.end());
  leaf->pages.insert(leaf->pages.end(), pages.begin(), pages.end());
  leaf->last_access = ++clock_;  // locked, so not in lru_
  total_pages_ += int32_t(pages.size());
}

void RadixCache::lock(Node* node) {
  for (Node* n = node; n != root_.get(); n = n->parent) {
    if (n->lock_ref++ == 0) {
      evictable_pages_ -= int32_t(n->pages.size());
      refresh(n);
    }
  }
}

void RadixCache::unlock(Node* node) {
  for (Node* n = node; n != root_.get(); n = n->parent) {
    TANDEM_CHECK(n->lock_ref > 0, "RadixCache::unlock: node is not locked");
    if (--n->lock_ref == 0) {
      evictable_pages_ += int32_t(n->pages.size());
      refresh(n);
    }
  }
}

void RadixCache::move_lock(Node* ancestor, Node* descendant) {
  // Nodes at and above `ancestor` keep their counts: one lock leaves, one arrives.
  for (Node* n = descendant; n != ancestor; n = n->parent) {
    TANDEM_CHECK(n != root_.get(), "RadixCache::move_lock: not a descendant");
    if (n->lock_ref++ == 0) {
      evictable_pages_ -= int32_t(n->pages.size());
      refresh(n);
    }
  }
}

int32_t RadixCache::evict(int32_t num_pages) {
  int32_t freed = 0;
  while (freed < num_pages && !lru_.empty()) {
    Node* leaf = lru_.begin()->second;  // least recently used unlocked leaf
    lru_.erase(lru_.begin());
    leaf->in_lru = false;
    for (const int32_t p : leaf->pages) allocator_.free(p);
    const int32_t n = int32_t(leaf->pages.size());
    freed += n;
    total_pages_ -= n;
    evictable_pages_ -= n;
    Node* parent = leaf->parent;
    // Heterogeneous erase is C++23; find with the span, erase by iterator.
    parent->children.erase(
        parent->children.find(std::span<const int32_t>(leaf->tokens).first(size_t(page_size_))));
    refresh(parent);  // may have become an unlocked leaf
  }
  return freed;
}

void RadixCache::check_invariants() const {
  int32_t total = 0, evictable = 0;
  size_t unlocked_leaves = 0;
  // A node's lock_ref counts the requests holding it or a node below it, so it is at least the
  // sum of its children's.
  std::vector<const Node*> stack;
  for (auto& [key, child] : root_->children) stack.push_back(child.get());
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    TANDEM_CHECK(n->tokens.size() == n->pages.size() * size_t(page_size_) && !n->pages.empty(),
                 "RadixCache: node with {} tokens and {} pages", n->tokens.size(), n->pages.size());
    int32_t child_locks = 0;
    for (auto& [key, child] : n->children) {
      TANDEM_CHECK(child->parent == n, "RadixCache: broken parent link");
      TANDEM_CHECK(std::equal(key.begin(), key.end(), child->tokens.begin()),
                   "RadixCache: child key is not its first page");
      child_locks += child->lock_ref;
      stack.push_back(child.get());
    }
    TANDEM_CHECK(n->lock_ref >= child_locks, "RadixCache: lock count {} below children's {}",
                 n->lock_ref, child_locks);
    total += int32_t(n->pages.size());
    if (n->lock_ref == 0) evictable += int32_t(n->pages.size());
    const bool leaf = n->children.empty() && n->lock_ref == 0;
    TANDEM_CHECK(n->in_lru == leaf && (!leaf || lru_.count({n->lru_key, const_cast<Node*>(n)}) == 1),
                 "RadixCache: LRU membership of a node is wrong");
    unlocked_leaves += leaf ? 1 : 0;
  }
  TANDEM_CHECK(lru_.size() == unlocked_leaves, "RadixCache: LRU holds {} nodes, the tree {}",
               lru_.size(), unlocked_leaves);
  TANDEM_CHECK(total == total_pages_ && evictable == evictable_pages_,
               "RadixCache: counted {} pages ({} evictable), counters say {} ({})", total,
               evictable, total_pages_, evictable_pages_);
}

}  // namespace tandem::runtime
