// RadixCache: a prefix tree over token ids whose edges are whole KV pages, so a prompt that
// starts like an earlier one reuses that one's pages instead of recomputing them (the idea of
// SGLang's RadixAttention, arXiv:2312.07104). Pure bookkeeping: token ids and page ids.
//
// Pages in the tree belong to the tree. A request that uses a cached prefix locks the deepest
// node of it; lock counts propagate to the root, and only unlocked leaves are evicted, least
// recently used first. Splitting a node keeps the original node object as the lower half, so a
// node pointer a request holds always names the same prefix.
// Not thread-safe: the scheduler thread owns it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <vector>

#include "runtime/page_allocator.h"

namespace tandem::runtime {

class RadixCache {
 public:
  struct Node;

  RadixCache(int32_t page_size, PageAllocator& allocator);
  ~RadixCache();
  RadixCache(const RadixCache&) = delete;
  RadixCache& operator=(const RadixCache&) = delete;

  struct Match {
    std::vector<int32_t> pages;  // one per matched page of tokens
    Node* node;                  // deepest matched node; root() when nothing matched
  };
  // The longest cached prefix of `tokens`, in whole pages; refreshes its LRU time.
  Match match(std::span<const int32_t> tokens);

  // Adds `tokens` (pages.size() whole pages) below `from`, whose path is the tokens before them.
  // Where the tree already has a page for a prefix, the caller's page is freed and pages[i] is
  // replaced by the tree's. Every page ends up owned by the tree. Returns the deepest node.
  Node* insert(Node* from, std::span<const int32_t> tokens, std::span<int32_t> pages);

  // Appends whole pages to `leaf`, a leaf locked by the caller alone (lock_ref 1, so no one
  // else can have cached what follows). Keeps a decoding request's path one node long instead
  // of growing a chain of one-page nodes; the node keeps its identity and lock.
  void extend(Node* leaf, std::span<const int32_t> tokens, std::span<const int32_t> pages);
  // Whether extend() may be used on `node` by its single holder.
  bool extendable(const Node* node) const;

  // A lock on `node` keeps it and its ancestors from eviction.
  void lock(Node* node);
  void unlock(Node* node);
  // lock(descendant) + unlock(ancestor) in one walk over the nodes between them.
  void move_lock(Node* ancestor, Node* descendant);

  // Evicts unlocked leaves, least recently used first, until `num_pages` pages went back to the
  // allocator or nothing is evictable. Returns the pages freed.
  int32_t evict(int32_t num_pages);

  Node* root() const { return root_.get(); }
  int32_t total_pages() const { return total_pages_; }          // owned by the tree
  int32_t evictable_pages() const { return evictable_pages_; }  // of which unlocked
  int32_t page_size() const { return page_size_; }
  // Walks the whole tree and checks the counters and lock counts (tests).
  void check_invariants() const;

 private:
  Node* find_child(Node* node, std::span<const int32_t> tokens) const;
  Node* split(Node* child, size_t keep_pages);
  void touch(Node* node, uint64_t now);  // sets last_access, keeps lru_ in order
  void refresh(Node* node);             // puts `node` in lru_ iff it is an unlocked leaf

  int32_t page_size_;
  PageAllocator& allocator_;
  std::unique_ptr<Node> root_;
  int32_t total_pages_ = 0;
  int32_t evictable_pages_ = 0;
  uint64_t clock_ = 0;  // LRU time: bumped on every match and insert
  // Unlocked leaves by last access: eviction takes from the front without walking the tree.
  std::set<std::pair<uint64_t, Node*>> lru_;
};

// Compares the first page of two token sequences (the key of a node among its siblings);
// transparent so a lookup takes a span without building a vector.
struct PageKeyLess {
  using is_transparent = void;
  bool operator()(std::span<const int32_t> a, std::span<const int32_t> b) const {
    return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
  }
};

struct RadixCache::Node {
  Node* parent = nullptr;
  std::vector<int32_t> tokens;  // whole pages of tokens on the edge into this node
  std::vector<int32_t> pages;   // tokens.size() / page_size
  std::map<std::vector<int32_t>, std::unique_ptr<Node>, PageKeyLess> children;  // by first page
  int32_t lock_ref = 0;
  uint64_t last_access = 0;
  bool in_lru = false;  // in lru_ under key (lru_key, this)
  uint64_t lru_key = 0;
};

}  // namespace tandem::runtime
