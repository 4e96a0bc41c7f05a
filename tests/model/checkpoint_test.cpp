// Checkpoint (safetensors reader) and SafetensorsWriter: round trips of every dtype, sharded
// layouts, zero-copy views, and one test per malformed input, each checking that the error
// names the file and the tensor.
#include "model/checkpoint.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "model/safetensors_writer.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

// Fresh random bytes (every bit pattern, NaNs included: round trips compare bitwise).
Tensor random_tensor(DType dtype, const Shape& shape, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<uint8_t*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(rng());
  return t;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

std::vector<uint8_t> random_bytes(size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = uint8_t(rng());
  return v;
}

// The text of an Error thrown by `fn`, or a failure when none is thrown.
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a tandem::Error";
  return "";
}

#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "'" << (text) << "' lacks '" << (part) << "'"

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           fmt::format("tandem_ckpt_{}_{}_{}", ::getpid(), info->name(), std::random_device{}());
    fs::create_directories(dir_);
    rng_.seed(std::random_device{}());
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // A file of: little-endian `header_len` (default: the header's size), header, data.
  fs::path write_raw(const std::string& name, const std::string& header,
                     const std::vector<uint8_t>& data, std::optional<uint64_t> header_len = {}) {
    const fs::path p = dir_ / name;
    std::ofstream out(p, std::ios::binary);
    const uint64_t len = header_len.value_or(header.size());
    out.write(reinterpret_cast<const char*>(&len), 8);
    out.write(header.data(), std::streamsize(header.size()));
    out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
    return p;
  }
  fs::path write_text(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  // Opens a raw file with `header` and `data_bytes` of random data; returns the error text
  // after checking it names the file.
  std::string open_error(const std::string& header, size_t data_bytes) {
    const fs::path p = write_raw("bad.safetensors", header, random_bytes(data_bytes, rng_));
    const std::string msg = error_of([&] { Checkpoint::open(p); });
    EXPECT_CONTAINS(msg, p.string());
    return msg;
  }

  fs::path dir_;
  std::mt19937_64 rng_;
};

// ---- round trips ----

TEST_F(CheckpointTest, RoundTripAllDtypes) {
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"model.embed_tokens.weight", random_tensor(DType::kBF16, {7, 5}, rng_)},
      {"a.f32", random_tensor(DType::kF32, {3, 2, 4}, rng_)},
      {"a.fp8.weight", random_tensor(DType::kF8E4M3, {9, 13}, rng_)},  // odd size: unaligned next
      {"a.i32", random_tensor(DType::kI32, {11}, rng_)},
      {"a.i64", random_tensor(DType::kI64, {2, 3}, rng_)},
      {"a.u8", random_tensor(DType::kU8, {17}, rng_)},
      {"scalar", random_tensor(DType::kF32, {}, rng_)},
      {"empty", random_tensor(DType::kBF16, {0, 4}, rng_)},
  };
  SafetensorsWriter writer;
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) {
    writer.add(name, t);
    total += t.nbytes();
  }
  const fs::path file = dir_ / "model.safetensors";
  writer.write(file, {{"format", "pt"}, {"note", "random"}});

  // Header length is a multiple of 8 and the data section follows it exactly.
  std::ifstream in(file, std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(fs::file_size(file), 8 + header_len + total);

  for (const fs::path& open_path : {file, dir_}) {
    const Checkpoint ckpt = Checkpoint::open(open_path);
    EXPECT_EQ(ckpt.path(), open_path);
    EXPECT_EQ(ckpt.size(), tensors.size());
    EXPECT_EQ(ckpt.total_bytes(), total);
    std::vector<std::string> expected_names;
    for (const auto& [name, t] : tensors) {
      expected_names.push_back(name);
      ASSERT_TRUE(ckpt.has(name));
      const TensorInfo& info = ckpt.info(name);
      EXPECT_EQ(info.name, name);
      EXPECT_EQ(info.dtype, t.dtype());
      EXPECT_EQ(info.shape, t.shape());
      EXPECT_EQ(info.nbytes, t.nbytes());
      EXPECT_EQ(info.file, file.string());
      EXPECT_TRUE(bitwise_equal(ckpt.get(name), t)) << name;
      EXPECT_TRUE(bitwise_equal(ckpt.get(name, t.dtype(), t.shape()), t)) << name;
    }
    std::sort(expected_names.begin(), expected_names.end());
    EXPECT_EQ(ckpt.names(), expected_names);
    EXPECT_FALSE(ckpt.has("absent"));
    ckpt.prefetch();
  }
}

TEST_F(CheckpointTest, WriterStoresNonContiguousTensorsContiguously) {
  const Tensor base = random_tensor(DType::kF32, {4, 6}, rng_);
  const Tensor column_slice = base.slice(1, 1, 4);  // [4, 3], strided
  ASSERT_FALSE(column_slice.is_contiguous());
  SafetensorsWriter writer;
  writer.add("w", column_slice);
  writer.write(dir_ / "model.safetensors");
  EXPECT_TRUE(bitwise_equal(Checkpoint::open(dir_).get("w"), column_slice.contiguous()));
}

TEST_F(CheckpointTest, ShardedRoundTrip) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (int layer = 0; layer < 6; ++layer) {
    tensors.emplace_back(fmt::format("model.layers.{}.mlp.weight", layer),
                         random_tensor(DType::kF8E4M3, {32, 40}, rng_));  // 1280 bytes
    tensors.emplace_back(fmt::format("model.layers.{}.mlp.weight_scale_inv", layer),
                         random_tensor(DType::kF32, {1, 1}, rng_));
    tensors.emplace_back(fmt::format("model.layers.{}.norm.weight", layer),
                         random_tensor(DType::kBF16, {40}, rng_));
  }
  tensors.emplace_back("big", random_tensor(DType::kBF16, {64, 64}, rng_));  // > one shard
  const uint64_t max_shard_bytes = 3000;
  write_sharded_checkpoint(dir_, tensors, max_shard_bytes);

  ASSERT_TRUE(fs::exists(dir_ / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors"));
  const Checkpoint ckpt = Checkpoint::open(dir_);
  const size_t shards = ckpt.files().size();
  EXPECT_GT(shards, 2u);
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) {
    EXPECT_TRUE(bitwise_equal(ckpt.get(name), t)) << name;
    total += t.nbytes();
  }
  EXPECT_EQ(ckpt.size(), tensors.size());
  EXPECT_EQ(ckpt.total_bytes(), total);

  // Shard names, sizes and the index metadata follow the Hugging Face layout.
  std::map<std::string, uint64_t> shard_bytes;
  for (const auto& name : ckpt.names()) shard_bytes[ckpt.info(name).file] += ckpt.info(name).nbytes;
  EXPECT_EQ(shard_bytes.size(), shards);
  for (size_t i = 0; i < shards; ++i) {
    const fs::path shard = dir_ / fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards);
    ASSERT_TRUE(fs::exists(shard)) << shard;
    EXPECT_TRUE(shard_bytes[shard.string()] <= max_shard_bytes ||
                Checkpoint::open(shard).size() == 1)  // an oversized tensor alone
        << shard;
  }
  std::ifstream index_in(dir_ / "model.safetensors.index.json");
  const auto index = nlohmann::json::parse(index_in);
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), tensors.size());
  EXPECT_EQ(index["weight_map"]["big"].get<std::string>(),
            fs::path(ckpt.info("big").file).filename().string());

  // No temporary files are left behind.
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string ext = e.path().extension().string();
    EXPECT_TRUE(ext == ".safetensors" || ext == ".json") << e.path();
  }
}

TEST_F(CheckpointTest, ShardedWriterWritesSingleFileWhenAllFitAndDropsStaleIndex) {
  write_text("model.safetensors.index.json", "{\"weight_map\": {\"stale\": \"gone.safetensors\"}}");
  const Tensor a = random_tensor(DType::kBF16, {8, 8}, rng_);
  const Tensor b = random_tensor(DType::kF32, {5}, rng_);
  write_sharded_checkpoint(dir_, {{"a", a}, {"b", b}}, 1 << 20);
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors.index.json"));
  const Checkpoint ckpt = Checkpoint::open(dir_);
  EXPECT_EQ(ckpt.files(), std::vector<std::string>{(dir_ / "model.safetensors").string()});
  EXPECT_TRUE(bitwise_equal(ckpt.get("a"), a));
  EXPECT_TRUE(bitwise_equal(ckpt.get("b"), b));
}

TEST_F(CheckpointTest, StreamingWriterWithoutFinishLeavesNothing) {
  {
    ShardedCheckpointWriter writer(dir_, 100);
    for (int i = 0; i < 5; ++i) writer.add(fmt::format("t{}", i), random_tensor(DType::kU8, {80}, rng_));
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(CheckpointTest, WriterRejectsDuplicateNames) {
  SafetensorsWriter writer;
  writer.add("x", random_tensor(DType::kF32, {2}, rng_));
  EXPECT_CONTAINS(error_of([&] { writer.add("x", random_tensor(DType::kF32, {2}, rng_)); }), "'x'");
  EXPECT_CONTAINS(error_of([&] { writer.add("__metadata__", random_tensor(DType::kF32, {2}, rng_)); }),
                  "__metadata__");
}

// ---- views ----

// The [start, end) address ranges where `file` is mapped into this process.
std::vector<std::pair<uintptr_t, uintptr_t>> mapped_ranges(const fs::path& file) {
  std::vector<std::pair<uintptr_t, uintptr_t>> out;
  std::ifstream maps("/proc/self/maps");
  const std::string target = fs::canonical(file).string();
  for (std::string line; std::getline(maps, line);) {
    if (line.size() < target.size() || line.compare(line.size() - target.size(), target.size(), target) != 0) continue;
    uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream(line) >> std::hex >> begin >> dash >> end;
    out.emplace_back(begin, end);
  }
  return out;
}

TEST_F(CheckpointTest, GetIsZeroCopyViewThatOutlivesCheckpoint) {
  const Tensor t = random_tensor(DType::kBF16, {128, 64}, rng_);
  SafetensorsWriter writer;
  writer.add("first", random_tensor(DType::kU8, {3}, rng_));
  writer.add("w", t);
  const fs::path file = dir_ / "model.safetensors";
  writer.write(file);

  Tensor view;
  {
    const Checkpoint ckpt = Checkpoint::open(dir_);
    view = ckpt.get("w");
    EXPECT_EQ(view.raw_data(), ckpt.get("w").raw_data());  // the same bytes, not a copy
    const auto ranges = mapped_ranges(file);
    ASSERT_FALSE(ranges.empty());
    const auto p = reinterpret_cast<uintptr_t>(view.raw_data());
    const auto first = reinterpret_cast<uintptr_t>(ckpt.get("first").raw_data());
    bool inside = false;
    for (const auto& [b, e] : ranges) inside |= (b <= p && p + view.nbytes() <= e);
    EXPECT_TRUE(inside) << "view is not inside the mapping of " << file;
    // offset_bytes is the absolute position in the file.
    EXPECT_EQ(p - first, ckpt.info("w").offset_bytes - ckpt.info("first").offset_bytes);
    std::ifstream in(file, std::ios::binary);
    in.seekg(std::streamoff(ckpt.info("w").offset_bytes));
    std::vector<char> bytes(t.nbytes());
    in.read(bytes.data(), std::streamsize(bytes.size()));
    EXPECT_EQ(std::memcmp(bytes.data(), t.raw_data(), t.nbytes()), 0);
  }
  // The Checkpoint is gone; its mapping lives on with the view, then goes with it.
  EXPECT_FALSE(mapped_ranges(file).empty());
  EXPECT_TRUE(bitwise_equal(view, t));
  view = Tensor();
  EXPECT_TRUE(mapped_ranges(file).empty());
}

TEST_F(CheckpointTest, GetChecksShapeAndDtype) {
  SafetensorsWriter writer;
  writer.add("w", random_tensor(DType::kBF16, {4, 8}, rng_));
  const fs::path file = dir_ / "model.safetensors";
  writer.write(file);
  const Checkpoint ckpt = Checkpoint::open(dir_);
  const std::string shape_err = error_of([&] { ckpt.get("w", DType::kBF16, {8, 4}); });
  EXPECT_CONTAINS(shape_err, file.string() + ": tensor 'w' has shape [4, 8] dtype bf16, expected [8, 4] bf16");
  const std::string dtype_err = error_of([&] { ckpt.get("w", DType::kF32, {4, 8}); });
  EXPECT_CONTAINS(dtype_err, "expected [4, 8] f32");
}

TEST_F(CheckpointTest, MissingTensorNamesCheckpointAndTensor) {
  SafetensorsWriter writer;
  writer.add("w", random_tensor(DType::kF32, {2}, rng_));
  writer.write(dir_ / "model.safetensors");
  const Checkpoint ckpt = Checkpoint::open(dir_);
  EXPECT_CONTAINS(error_of([&] { ckpt.info("nope"); }),
                  fmt::format("checkpoint {}: missing tensor 'nope'", dir_.string()));
  EXPECT_CONTAINS(error_of([&] { ckpt.get("nope"); }), "missing tensor 'nope'");
}

// ---- malformed files ----

TEST_F(CheckpointTest, FileMissing) {
  const fs::path p = dir_ / "absent.safetensors";
  EXPECT_CONTAINS(error_of([&] { Checkpoint::open(p); }), p.string());
}

TEST_F(CheckpointTest, FileUnreadable) {
  const fs::path p = write_raw("locked.safetensors", "{}      ", {});
  ::chmod(p.c_str(), 0);
  if (::access(p.c_str(), R_OK) == 0) GTEST_SKIP() << "running as root: permissions not enforced";
  const std::string msg = error_of([&] { Checkpoint::open(p); });
  EXPECT_CONTAINS(msg, p.string());
  EXPECT_CONTAINS(msg, "cannot open");
}

TEST_F(CheckpointTest, FileIsDirectory) {
  const fs::path p = dir_ / "dir.safetensors";
  fs::create_directories(p / "inner");
  // Opened as a file path it is a directory without checkpoint files.
  EXPECT_CONTAINS(error_of([&] { Checkpoint::open(p); }), p.string());
}

TEST_F(CheckpointTest, FileIsFifo) {
  // Opening a FIFO for reading would block until a writer appears; it must fail at once.
  const fs::path p = dir_ / "pipe.safetensors";
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
  const std::string msg = error_of([&] { Checkpoint::open(p); });
  EXPECT_CONTAINS(msg, p.string() + ": not a regular file");
}

TEST_F(CheckpointTest, FileShorterThanEightBytes) {
  const fs::path p = write_text("short.safetensors", "abc");
  const std::string msg = error_of([&] { Checkpoint::open(p); });
  EXPECT_CONTAINS(msg, p.string());
  EXPECT_CONTAINS(msg, "shorter than the 8-byte header length");
  const fs::path empty = write_text("empty.safetensors", "");
  EXPECT_CONTAINS(error_of([&] { Checkpoint::open(empty); }), empty.string());
}

TEST_F(CheckpointTest, HeaderLengthLargerThanFile) {
  const fs::path p = write_raw("long.safetensors", "{}", {}, 1000);
  const std::string msg = error_of([&] { Checkpoint::open(p); });
  EXPECT_CONTAINS(msg, p.string());
  EXPECT_CONTAINS(msg, "header length 1000 is larger than");
}

TEST_F(CheckpointTest, HeaderLengthAbsurd) {
  const fs::path p = write_raw("absurd.safetensors", "{}", {}, uint64_t(1) << 40);
  const std::string msg = error_of([&] { Checkpoint::open(p); });
  EXPECT_CONTAINS(msg, p.string());
  EXPECT_CONTAINS(msg, "absurd");
}

TEST_F(CheckpointTest, HeaderNotJson) {
  EXPECT_CONTAINS(open_error("{\"w\": {\"dtype\": ", 0), "not valid JSON");
}

TEST_F(CheckpointTest, HeaderNotObject) {
  EXPECT_CONTAINS(open_error("[1, 2, 3]", 0), "expected an object");
}

TEST_F(CheckpointTest, EntryNotObject) {
  EXPECT_CONTAINS(open_error(R"({"w": [1, 2]})", 0), "tensor 'w': entry is a JSON array");
}

TEST_F(CheckpointTest, EntryMissingDtype) {
  EXPECT_CONTAINS(open_error(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8),
                  "tensor 'w': missing 'dtype'");
}

TEST_F(CheckpointTest, EntryMissingShape) {
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", 8),
                  "tensor 'w': missing 'shape'");
}

TEST_F(CheckpointTest, EntryMissingDataOffsets) {
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": "F32", "shape": [2]}})", 8),
                  "tensor 'w': missing 'data_offsets'");
}

TEST_F(CheckpointTest, EntryDtypeWrongType) {
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}})", 8),
                  "tensor 'w': 'dtype' is a JSON number");
}

TEST_F(CheckpointTest, EntryShapeWrongType) {
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", 8),
                  "tensor 'w': 'shape' is a JSON string");
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", 8),
                  "tensor 'w': shape [2.5] has a non-integer dimension");
}

TEST_F(CheckpointTest, EntryDataOffsetsWrongType) {
  for (const char* offsets : {"[0]", "[0, 8, 16]", "\"0-8\"", "[0, 8.0]", "[-8, 8]"}) {
    const std::string header =
        fmt::format(R"({{"w": {{"dtype": "F32", "shape": [2], "data_offsets": {}}}}})", offsets);
    EXPECT_CONTAINS(open_error(header, 16), "tensor 'w': data_offsets");
  }
}

TEST_F(CheckpointTest, NegativeDimension) {
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": "F32", "shape": [-2, 1], "data_offsets": [0, 8]}})", 8),
                  "tensor 'w': shape [-2,1] has a negative dimension");
}

TEST_F(CheckpointTest, DataOffsetsBeginAfterEnd) {
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8),
                  "tensor 'w': data_offsets [8, 0] has begin > end");
}

TEST_F(CheckpointTest, TruncatedData) {
  const std::string msg =
      open_error(R"({"w": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 32]}})", 20);
  EXPECT_CONTAINS(msg, "tensor 'w': data_offsets [0, 32] end beyond the 20-byte data section");
}

TEST_F(CheckpointTest, ByteSizeMismatch) {
  const std::string msg =
      open_error(R"({"w": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 30]}})", 32);
  EXPECT_CONTAINS(msg, "tensor 'w': shape [4, 4] of BF16 needs 32 bytes but data_offsets [0, 30] hold 30");
  // numel * size overflowing 64 bits is a mismatch too, not a wrap-around.
  EXPECT_CONTAINS(
      open_error(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0),
      "tensor 'w'");
}

TEST_F(CheckpointTest, OverlappingTensors) {
  const std::string msg = open_error(
      R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
      R"( "b": {"dtype": "F32", "shape": [4], "data_offsets": [12, 28]}})", 28);
  EXPECT_CONTAINS(msg, "tensors 'a'");
  EXPECT_CONTAINS(msg, "'b'");
  EXPECT_CONTAINS(msg, "overlap");
}

TEST_F(CheckpointTest, UnknownDtype) {
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}})", 4),
                  "tensor 'w' has unsupported dtype 'F16'");
  // tandem's own lower-case names are not safetensors names.
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": "bf16", "shape": [2], "data_offsets": [0, 4]}})", 4),
                  "tensor 'w' has unsupported dtype 'bf16'");
}

TEST_F(CheckpointTest, DuplicateTensorInHeader) {
  EXPECT_CONTAINS(open_error(R"({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},)"
                             R"( "w": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})", 4),
                  "tensor 'w' appears twice");
}

TEST_F(CheckpointTest, MetadataIsIgnoredButMustBeStrings) {
  const auto data = random_bytes(4, rng_);
  const fs::path p = write_raw(
      "meta.safetensors",
      R"({"__metadata__": {"format": "pt"}, "w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})",
      data);
  const Checkpoint ckpt = Checkpoint::open(p);
  EXPECT_EQ(ckpt.names(), std::vector<std::string>{"w"});
  EXPECT_EQ(std::memcmp(ckpt.get("w").raw_data(), data.data(), 4), 0);

  EXPECT_CONTAINS(open_error(R"({"__metadata__": ["pt"]})", 0), "__metadata__ is a JSON array");
  EXPECT_CONTAINS(open_error(R"({"__metadata__": {"step": 3}})", 0),
                  "__metadata__ entry 'step' is a JSON number");
}

// ---- directories and sharded indexes ----

TEST_F(CheckpointTest, DirectoryWithoutCheckpointFiles) {
  const std::string none = error_of([&] { Checkpoint::open(dir_); });
  EXPECT_CONTAINS(none, dir_.string());
  EXPECT_CONTAINS(none, "0 *.safetensors files");
  write_raw("a.safetensors", "{}      ", {});
  write_raw("b.safetensors", "{}      ", {});
  EXPECT_CONTAINS(error_of([&] { Checkpoint::open(dir_); }), "2 *.safetensors files");
  fs::remove(dir_ / "b.safetensors");
  EXPECT_EQ(Checkpoint::open(dir_).size(), 0u);  // exactly one: used
}

class ShardedCheckpointTest : public CheckpointTest {
 protected:
  // Two valid shards: s1 holds a, b; s2 holds c.
  void write_shards() {
    SafetensorsWriter w1, w2;
    w1.add("a", random_tensor(DType::kF32, {3}, rng_));
    w1.add("b", random_tensor(DType::kBF16, {2, 2}, rng_));
    w2.add("c", random_tensor(DType::kF8E4M3, {5}, rng_));
    w1.write(dir_ / "s1.safetensors");
    w2.write(dir_ / "s2.safetensors");
  }
  fs::path index_path() const { return dir_ / "model.safetensors.index.json"; }
  std::string open_error() {
    const std::string msg = error_of([&] { Checkpoint::open(dir_); });
    return msg;
  }
};

TEST_F(ShardedCheckpointTest, IndexNotJson) {
  write_shards();
  write_text("model.safetensors.index.json", "{\"weight_map\": {");
  const std::string msg = open_error();
  EXPECT_CONTAINS(msg, index_path().string());
  EXPECT_CONTAINS(msg, "not valid JSON");
}

TEST_F(ShardedCheckpointTest, IndexNotObject) {
  write_text("model.safetensors.index.json", "[]");
  EXPECT_CONTAINS(open_error(), index_path().string() + ": index is a JSON array");
}

TEST_F(ShardedCheckpointTest, WeightMapMissing) {
  write_shards();
  write_text("model.safetensors.index.json", R"({"metadata": {"total_size": 21}})");
  EXPECT_CONTAINS(open_error(), index_path().string() + ": index has no 'weight_map'");
}

TEST_F(ShardedCheckpointTest, WeightMapWrongTypes) {
  write_text("model.safetensors.index.json", R"({"weight_map": ["a"]})");
  EXPECT_CONTAINS(open_error(), "'weight_map' is a JSON array");
  write_text("model.safetensors.index.json", R"({"weight_map": {"a": 1}})");
  EXPECT_CONTAINS(open_error(), "weight_map entry for tensor 'a' is a JSON number");
  write_text("model.safetensors.index.json", R"({"weight_map": {"a": "../s1.safetensors"}})");
  EXPECT_CONTAINS(open_error(), "tensor 'a' names shard '../s1.safetensors'");
}

TEST_F(ShardedCheckpointTest, ShardMissing) {
  write_shards();
  write_text("model.safetensors.index.json",
             R"({"weight_map": {"a": "s1.safetensors", "z": "s9.safetensors"}})");
  const std::string msg = open_error();
  EXPECT_CONTAINS(msg, index_path().string());
  EXPECT_CONTAINS(msg, "shard 's9.safetensors' (listed for tensor 'z') is missing");
}

TEST_F(ShardedCheckpointTest, TensorAbsentFromItsShard) {
  write_shards();
  write_text("model.safetensors.index.json",
             R"({"weight_map": {"a": "s1.safetensors", "q": "s1.safetensors", "c": "s2.safetensors"}})");
  const std::string msg = open_error();
  EXPECT_CONTAINS(msg, index_path().string());
  EXPECT_CONTAINS(msg, "tensor 'q' is listed in weight_map for " + (dir_ / "s1.safetensors").string() +
                           " but absent from it");
  // Listed for one shard, found in another: also absent from its shard.
  write_text("model.safetensors.index.json",
             R"({"weight_map": {"a": "s1.safetensors", "c": "s1.safetensors", "b": "s2.safetensors"}})");
  EXPECT_CONTAINS(open_error(), "tensor 'b' is listed in weight_map for");
}

TEST_F(ShardedCheckpointTest, TensorInTwoShards) {
  write_shards();
  SafetensorsWriter w3;
  w3.add("b", random_tensor(DType::kBF16, {2, 2}, rng_));
  w3.write(dir_ / "s3.safetensors");
  write_text("model.safetensors.index.json",
             R"({"weight_map": {"a": "s1.safetensors", "b": "s3.safetensors", "c": "s2.safetensors"}})");
  const std::string msg = open_error();
  EXPECT_CONTAINS(msg, "tensor 'b' is in two shards");
  EXPECT_CONTAINS(msg, (dir_ / "s1.safetensors").string());
  EXPECT_CONTAINS(msg, (dir_ / "s3.safetensors").string());
}

TEST_F(ShardedCheckpointTest, BadShardIsNamed) {
  write_shards();
  const fs::path bad = write_text("s3.safetensors", "xy");
  write_text("model.safetensors.index.json",
             R"({"weight_map": {"a": "s1.safetensors", "d": "s3.safetensors"}})");
  EXPECT_CONTAINS(open_error(), bad.string());
}

TEST_F(ShardedCheckpointTest, UnlistedTensorsInAListedShardAreIncluded) {
  write_shards();
  write_text("model.safetensors.index.json", R"({"weight_map": {"a": "s1.safetensors"}})");
  const Checkpoint ckpt = Checkpoint::open(index_path());  // the index path works too
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"a", "b"}));  // s2 is never named
}

}  // namespace
}  // namespace tandem
