#include "model/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "model/safetensors_file.h"

namespace tandem {

namespace fs = std::filesystem;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// A file written at `target` through a temporary name, renamed into place by commit().
// Writes of at least kDirectBytes go straight from the caller's memory; smaller ones are
// gathered in a buffer so many small tensors do not cost a syscall each.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(fs::path target)
      : target_(std::move(target)), temp_(target_.string() + ".tmp") {
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    TANDEM_CHECK(fd_ >= 0, "{}: cannot create: {}", temp_.string(), std::strerror(errno));
    buffer_.reserve(kBufferBytes);
  }
  ~AtomicFileWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) {
      std::error_code ec;
      fs::remove(temp_, ec);
    }
  }

  void write(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    if (n >= kDirectBytes) {
      flush();
      write_all(p, n);
    } else {
      if (buffer_.size() + n > kBufferBytes) flush();
      buffer_.insert(buffer_.end(), p, p + n);
    }
  }

  void commit() {
    flush();
    const int rc = ::close(fd_);
    fd_ = -1;
    TANDEM_CHECK(rc == 0, "{}: close failed: {}", temp_.string(), std::strerror(errno));
    std::error_code ec;
    fs::rename(temp_, target_, ec);
    TANDEM_CHECK(!ec, "{}: cannot rename to {}: {}", temp_.string(), target_.string(),
                 ec.message());
    committed_ = true;
  }

 private:
  static constexpr size_t kDirectBytes = 1 << 20;
  static constexpr size_t kBufferBytes = 8 << 20;

  void flush() {
    write_all(buffer_.data(), buffer_.size());
    buffer_.clear();
  }
  void write_all(const uint8_t* p, size_t n) {
    while (n > 0) {
      // Linux writes at most ~2 GiB per call; loop over partial writes and EINTR.
      const ssize_t w = ::write(fd_, p, std::min<size_t>(n, 1ull << 30));
      if (w < 0 && errno == EINTR) continue;
      TANDEM_CHECK(w > 0, "{}: write failed: {}", temp_.string(),
                   w < 0 ? std::strerror(errno) : "no progress");
      p += w;
      n -= size_t(w);
    }
  }

  fs::path target_, temp_;
  int fd_ = -1;
  bool committed_ = false;
  std::vector<uint8_t> buffer_;
};

}  // namespace

// ---- SafetensorsWriter ----

void SafetensorsWriter::add(const std::string& name, const Tensor& tensor) {
  TANDEM_CHECK(!name.empty() && name != "__metadata__",
               "SafetensorsWriter: invalid tensor name '{}'", name);
  TANDEM_CHECK(tensor.defined(), "SafetensorsWriter: tensor '{}' is undefined", name);
  TANDEM_CHECK(index_.emplace(name, tensors_.size()).second,
               "SafetensorsWriter: tensor '{}' added twice", name);
  Tensor t = tensor.device().is_cpu() ? tensor.contiguous() : tensor.to(Device::cpu());
  data_bytes_ += t.nbytes();
  tensors_.emplace_back(name, std::move(t));
}

void SafetensorsWriter::clear() {
  tensors_.clear();
  index_.clear();
  data_bytes_ = 0;
}

void SafetensorsWriter::write(const fs::path& file,
                              const std::map<std::string, std::string>& metadata) const {
  // Built as text: the header lists tensors in order of addition, like the data, and
  // ordered_json would look each key up linearly (quadratic for 100k tensors).
  std::string text = "{";
  if (!metadata.empty()) text += "\"__metadata__\":" + nlohmann::json(metadata).dump();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors_) {
    const uint64_t end = offset + t.nbytes();
    const nlohmann::json entry = {{"dtype", safetensors_dtype_name(t.dtype())},
                                  {"shape", t.shape()},
                                  {"data_offsets", {offset, end}}};
    if (text.size() > 1) text += ',';
    text += nlohmann::json(name).dump() + ":" + entry.dump();
    offset = end;
  }
  text += '}';
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned
  TANDEM_CHECK(text.size() <= kSafetensorsMaxHeaderBytes, "{}: header of {} bytes is too large",
               file.string(), text.size());

  AtomicFileWriter out(file);
  const uint64_t header_bytes = text.size();  // little-endian host (checked in safetensors_file)
  out.write(&header_bytes, 8);
  out.write(text.data(), text.size());
  for (const auto& [name, t] : tensors_) out.write(t.raw_data(), t.nbytes());
  out.commit();
}

// ---- ShardedCheckpointWriter ----

ShardedCheckpointWriter::ShardedCheckpointWriter(fs::path dir, uint64_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {
  TANDEM_CHECK(max_shard_bytes_ > 0, "ShardedCheckpointWriter: max_shard_bytes must be positive");
  std::error_code ec;
  fs::create_directories(dir_, ec);
  TANDEM_CHECK(!ec, "{}: cannot create directory: {}", dir_.string(), ec.message());
}

ShardedCheckpointWriter::~ShardedCheckpointWriter() {
  if (finished_) return;
  std::error_code ec;
  for (const fs::path& p : written_) fs::remove(p, ec);
}

void ShardedCheckpointWriter::add(const std::string& name, const Tensor& tensor) {
  TANDEM_CHECK(!finished_, "ShardedCheckpointWriter: add('{}') after finish()", name);
  TANDEM_CHECK(!shard_of_.count(name), "ShardedCheckpointWriter: tensor '{}' added twice", name);
  const uint64_t bytes = tensor.nbytes();
  if (current_.size() > 0 && current_.data_bytes() + bytes > max_shard_bytes_) flush_shard();
  current_.add(name, tensor);
  shard_of_[name] = written_.size();
  total_bytes_ += bytes;
}

void ShardedCheckpointWriter::flush_shard() {
  // ".partial" is not ".safetensors", so Checkpoint::open never mistakes it for a checkpoint.
  const fs::path temp = dir_ / fmt::format("model-{:05d}.safetensors.partial", written_.size() + 1);
  current_.write(temp, {{"format", "pt"}});
  written_.push_back(temp);
  current_.clear();
}

void ShardedCheckpointWriter::finish() {
  TANDEM_CHECK(!finished_, "ShardedCheckpointWriter: finish() called twice");
  if (current_.size() > 0 || written_.empty()) flush_shard();
  const size_t n = written_.size();
  std::error_code ec;
  auto rename = [&](const fs::path& from, const fs::path& to) {
    fs::rename(from, to, ec);
    TANDEM_CHECK(!ec, "{}: cannot rename to {}: {}", from.string(), to.string(), ec.message());
  };
  if (n == 1) {
    rename(written_[0], dir_ / kSingleName);
    fs::remove(dir_ / kIndexName, ec);  // a stale index would take precedence in open()
  } else {
    std::vector<std::string> names;
    for (size_t i = 0; i < n; ++i) {
      names.push_back(fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n));
      rename(written_[i], dir_ / names.back());
    }
    nlohmann::json index;
    index["metadata"]["total_size"] = total_bytes_;
    index["weight_map"] = nlohmann::json::object();
    for (const auto& [name, shard] : shard_of_) index["weight_map"][name] = names[shard];
    const std::string text = index.dump(2) + "\n";
    AtomicFileWriter out(dir_ / kIndexName);
    out.write(text.data(), text.size());
    out.commit();
    fs::remove(dir_ / kSingleName, ec);
  }
  finished_ = true;
}

void write_sharded_checkpoint(const fs::path& dir,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              uint64_t max_shard_bytes) {
  ShardedCheckpointWriter writer(dir, max_shard_bytes);
  for (const auto& [name, t] : tensors) writer.add(name, t);
  writer.finish();
}

}  // namespace tandem
