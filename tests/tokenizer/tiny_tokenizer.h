// A small synthetic byte-level BPE tokenizer.json for tests that must not depend on the real
// files: the 256 byte tokens plus merges built from a seed.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"

namespace tandem::tokenizer::test {

inline nlohmann::json tiny_tokenizer_json(int num_merges, unsigned seed) {
  nlohmann::json vocab = nlohmann::json::object();
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    utf8_append(ch, kByteLevel.byte_to_cp[b]);
    vocab[ch] = b;
    tokens.push_back(ch);
  }
  // Merges over a small alphabet so that they chain into long tokens.
  const std::string alphabet = "abcd ";
  std::vector<std::string> pool;
  for (const char c : alphabet) pool.push_back(tokens[static_cast<uint8_t>(c)]);
  nlohmann::json merges = nlohmann::json::array();
  std::mt19937 rng(seed);
  while (static_cast<int>(merges.size()) < num_merges) {
    const std::string a = pool[rng() % pool.size()];
    const std::string b = pool[rng() % pool.size()];
    if (vocab.contains(a + b)) continue;
    vocab[a + b] = static_cast<int>(vocab.size());
    pool.push_back(a + b);
    merges.push_back(a + " " + b);
  }
  return {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array({
           {{"id", static_cast<int>(vocab.size())}, {"content", "<s>"}, {"special", true},
            {"normalized", false}},
           {{"id", static_cast<int>(vocab.size()) + 1}, {"content", "<tool>"}, {"special", false},
            {"normalized", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", {{"type", "ByteLevel"}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
  };
}

inline nlohmann::json tiny_tokenizer_config() {
  return {{"add_bos_token", true}, {"bos_token", "<s>"}, {"eos_token", nullptr}};
}

inline void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// A fresh empty folder under the system temp dir, named after the running test.
std::filesystem::path scratch_dir(const std::string& name);

}  // namespace tandem::tokenizer::test
