// The BPE model of a byte-level tokenizer.json: vocabulary, merges by rank, and a cache of
// already-merged pre-tokens. Pre-tokens come in as raw UTF-8 bytes; the byte-level mapping is
// implicit (each byte starts as the id of its alphabet character).
// Thread-safe: immutable after construction except the cache, which is sharded and locked.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tandem::tokenizer {

class Bpe {
 public:
  // Builds from tokenizer.json's "model" value; errors name `file`.
  static std::unique_ptr<Bpe> from_json(const nlohmann::json& model, const std::string& file);

  // Appends the ids of one pre-token (non-empty raw bytes).
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;

  // Vocabulary in byte-level form ("Ġthe").
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;  // "" when the id has no entry
  int32_t id_end() const { return static_cast<int32_t>(id_to_token_.size()); }
  size_t num_merges() const { return num_merges_; }

  // The merge loop without the cache; `force_heap` picks the large-word path (for tests).
  void merge(std::string_view piece, std::vector<int32_t>& ids, bool force_heap) const;

 private:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  // Open-addressing table (pair of ids -> merge); far faster than std::unordered_map here.
  struct PairTable {
    std::vector<uint64_t> keys;  // kEmpty where unused
    std::vector<Merge> values;
    uint64_t mask = 0;
    void build(size_t n);
    void insert(uint64_t key, Merge m);
    const Merge* find(uint64_t key) const;
  };
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using IdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;
  using CacheMap = std::unordered_map<std::string, std::vector<int32_t>, StringHash,
                                      std::equal_to<>>;
  struct CacheShard {
    std::mutex mutex;
    CacheMap map;
  };
  static constexpr int kCacheShards = 64;
  static constexpr size_t kCacheEntriesPerShard = 4096;
  static constexpr size_t kCacheMaxPieceBytes = 128;

  const Merge* find_merge(int32_t left, int32_t right) const {
    return pairs_.find((static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
                       static_cast<uint32_t>(right));
  }
  void merge_small(std::vector<int32_t>& symbols) const;
  void merge_heap(std::vector<int32_t>& symbols) const;

  IdMap vocab_;
  std::vector<std::string> id_to_token_;
  std::array<int32_t, 256> byte_ids_{};
  PairTable pairs_;
  size_t num_merges_ = 0;
  bool ignore_merges_ = false;
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace tandem::tokenizer
