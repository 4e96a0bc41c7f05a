#include "tokenizer/bpe.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <limits>
#include <queue>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"

namespace tandem::tokenizer {

namespace {

constexpr uint64_t kEmpty = ~uint64_t{0};
constexpr uint32_t kNoRank = std::numeric_limits<uint32_t>::max();
// Words up to this many bytes use the quadratic scan (cheaper than a heap for short words,
// which are nearly all of them); longer ones use the heap, O(n log n).
constexpr size_t kHeapThreshold = 48;

uint64_t mix(uint64_t key) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdULL;
  key ^= key >> 33;
  return key;
}

bool is_null_or_empty(const nlohmann::json& model, const char* key) {
  if (!model.contains(key) || model[key].is_null()) return true;
  return model[key].is_string() && model[key].get<std::string>().empty();
}

}  // namespace

void Bpe::PairTable::build(size_t n) {
  const size_t capacity = std::bit_ceil(std::max<size_t>(16, n * 2));
  keys.assign(capacity, kEmpty);
  values.assign(capacity, Merge{});
  mask = capacity - 1;
}

void Bpe::PairTable::insert(uint64_t key, Merge m) {
  for (uint64_t i = mix(key) & mask;; i = (i + 1) & mask) {
    if (keys[i] == key) return;  // a duplicate merge keeps its first (lowest) rank
    if (keys[i] == kEmpty) {
      keys[i] = key;
      values[i] = m;
      return;
    }
  }
}

const Bpe::Merge* Bpe::PairTable::find(uint64_t key) const {
  for (uint64_t i = mix(key) & mask;; i = (i + 1) & mask) {
    if (keys[i] == key) return &values[i];
    if (keys[i] == kEmpty) return nullptr;
  }
}

std::unique_ptr<Bpe> Bpe::from_json(const nlohmann::json& model, const std::string& file) {
  TANDEM_CHECK(model.is_object(), "{}: \"model\" is missing or not an object", file);
  const std::string type = model.value("type", std::string("BPE"));
  TANDEM_CHECK(type == "BPE", "{}: model type \"{}\" is not supported (only byte-level BPE)",
               file, type);
  TANDEM_CHECK(!model.contains("dropout") || model["dropout"].is_null() ||
                   model["dropout"].get<double>() == 0.0,
               "{}: BPE dropout is not supported", file);
  TANDEM_CHECK(is_null_or_empty(model, "continuing_subword_prefix") &&
                   is_null_or_empty(model, "end_of_word_suffix"),
               "{}: BPE subword prefixes/suffixes are not supported (not a byte-level BPE)", file);
  TANDEM_CHECK(!model.value("byte_fallback", false),
               "{}: BPE byte_fallback is not supported (not a byte-level BPE)", file);
  TANDEM_CHECK(model.contains("vocab") && model["vocab"].is_object(),
               "{}: model.vocab is missing or not an object", file);
  TANDEM_CHECK(model.contains("merges") && model["merges"].is_array(),
               "{}: model.merges is missing or not an array", file);

  auto bpe = std::make_unique<Bpe>();
  bpe->ignore_merges_ = model.value("ignore_merges", false);
  int32_t max_id = -1;
  for (const auto& [token, id_value] : model["vocab"].items()) {
    TANDEM_CHECK(id_value.is_number_integer(), "{}: vocab entry \"{}\" has a non-integer id",
                 file, token);
    const auto id = id_value.get<int64_t>();
    TANDEM_CHECK(id >= 0 && id < (int64_t{1} << 30), "{}: vocab id {} out of range", file, id);
    bpe->vocab_.emplace(token, static_cast<int32_t>(id));
    max_id = std::max(max_id, static_cast<int32_t>(id));
  }
  bpe->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : bpe->vocab_) bpe->id_to_token_[id] = token;

  // Every byte must have a token, or text containing it could not be encoded (tokenizers would
  // silently drop it).
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    utf8_append(ch, kByteLevel.byte_to_cp[b]);
    const auto it = bpe->vocab_.find(ch);
    TANDEM_CHECK(it != bpe->vocab_.end(),
                 "{}: the vocabulary has no token for byte 0x{:02x} (\"{}\"); only byte-level BPE "
                 "vocabularies are supported", file, b, ch);
    bpe->byte_ids_[b] = it->second;
  }

  const auto& merges = model["merges"];
  bpe->pairs_.build(merges.size());
  uint32_t rank = 0;
  for (const auto& m : merges) {
    std::string left, right;
    if (m.is_string()) {
      const auto& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      TANDEM_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos,
                   "{}: merge #{} \"{}\" is not two tokens separated by one space", file, rank, s);
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else {
      TANDEM_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                   "{}: merge #{} is neither \"a b\" nor [\"a\", \"b\"]", file, rank);
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    }
    const auto l = bpe->vocab_.find(left), r = bpe->vocab_.find(right),
               n = bpe->vocab_.find(left + right);
    TANDEM_CHECK(l != bpe->vocab_.end() && r != bpe->vocab_.end() && n != bpe->vocab_.end(),
                 "{}: merge #{} (\"{}\" \"{}\") uses a token missing from the vocabulary", file,
                 rank, left, right);
    bpe->pairs_.insert((static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second),
                       Merge{rank, n->second});
    ++rank;
  }
  bpe->num_merges_ = merges.size();
  return bpe;
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string& Bpe::id_to_token(int32_t id) const {
  static const std::string kNone;
  if (id < 0 || id >= id_end()) return kNone;
  return id_to_token_[id];
}

void Bpe::encode_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.size() == 1) {
    ids.push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= kCacheMaxPieceBytes;
  CacheShard& shard = cache_[std::hash<std::string_view>{}(piece) % kCacheShards];
  if (cacheable) {
    std::lock_guard lock(shard.mutex);
    const auto it = shard.map.find(piece);
    if (it != shard.map.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids.size();
  merge(piece, ids, false);
  if (cacheable) {
    std::lock_guard lock(shard.mutex);
    // Crude eviction: a full shard starts over. Hot words come back within a few calls.
    if (shard.map.size() >= kCacheEntriesPerShard) shard.map.clear();
    shard.map.emplace(std::string(piece), std::vector<int32_t>(ids.begin() + first, ids.end()));
  }
}

void Bpe::merge(std::string_view piece, std::vector<int32_t>& ids, bool force_heap) const {
  if (ignore_merges_) {
    std::string word;
    for (const char c : piece) utf8_append(word, kByteLevel.byte_to_cp[static_cast<uint8_t>(c)]);
    if (const auto id = token_to_id(word)) {
      ids.push_back(*id);
      return;
    }
  }
  thread_local std::vector<int32_t> symbols;
  symbols.resize(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) symbols[i] = byte_ids_[static_cast<uint8_t>(piece[i])];
  if (force_heap || piece.size() > kHeapThreshold) {
    merge_heap(symbols);
  } else {
    merge_small(symbols);
  }
  for (const int32_t s : symbols) {
    if (s >= 0) ids.push_back(s);
  }
}

// Repeatedly merges the adjacent pair of lowest rank, the leftmost one on ties: the same
// order as tokenizers' priority queue of (rank, position).
void Bpe::merge_small(std::vector<int32_t>& symbols) const {
  thread_local std::vector<uint32_t> ranks;
  thread_local std::vector<int32_t> merged;
  const size_t n = symbols.size();
  ranks.resize(n);
  merged.resize(n);
  auto rank_at = [&](size_t i) {
    const Merge* m = find_merge(symbols[i], symbols[i + 1]);
    ranks[i] = m ? m->rank : kNoRank;
    merged[i] = m ? m->new_id : -1;
  };
  size_t len = n;
  for (size_t i = 0; i + 1 < len; ++i) rank_at(i);
  while (len > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < len; ++i) {
      if (ranks[i] < ranks[best]) best = i;
    }
    if (ranks[best] == kNoRank) break;
    symbols[best] = merged[best];
    for (size_t i = best + 1; i + 1 < len; ++i) {
      symbols[i] = symbols[i + 1];
      ranks[i] = ranks[i + 1];
      merged[i] = merged[i + 1];
    }
    --len;
    if (best > 0) rank_at(best - 1);
    if (best + 1 < len) rank_at(best);
  }
  symbols.resize(len);
}

// Same order as merge_small with a heap of (rank, position) and a linked list of symbols;
// stale heap entries are recognised because their pair no longer merges into the same id
// (a pair's covered span only grows, and a longer span is a different token).
void Bpe::merge_heap(std::vector<int32_t>& symbols) const {
  struct Entry {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const auto n = static_cast<int32_t>(symbols.size());
  std::vector<int32_t> prev(n), next(n);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    if (const Merge* m = find_merge(symbols[pos], symbols[next[pos]])) {
      heap.push(Entry{m->rank, static_cast<uint32_t>(pos), m->new_id});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Entry e = heap.top();
    heap.pop();
    const auto pos = static_cast<int32_t>(e.pos);
    if (symbols[pos] < 0 || next[pos] < 0) continue;
    const int32_t right = next[pos];
    const Merge* m = find_merge(symbols[pos], symbols[right]);
    if (m == nullptr || m->new_id != e.new_id) continue;
    symbols[pos] = e.new_id;
    symbols[right] = -1;
    next[pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = pos;
    push(prev[pos]);
    push(pos);
  }
}

}  // namespace tandem::tokenizer
