// One .safetensors file: a read-only memory mapping and its validated tensor table.
// Internal to model/ (Checkpoint and SafetensorsWriter build on it).
// Thread safety: immutable after open; const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/progress.h"
#include "model/checkpoint.h"

namespace tandem {

// Headers larger than this are rejected as corrupt (real ones are a few MB at most).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100ull << 20;

// "BF16", "F8_E4M3", ... : the safetensors spelling of a dtype.
std::string safetensors_dtype_name(DType dtype);

// A whole file mapped PROT_READ, MAP_PRIVATE. An empty file has no mapping (data() null).
class MappedFile {
 public:
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Faults in every page (readahead one chunk ahead), advancing `bar` by the bytes done.
  void prefetch(ProgressBar& bar) const;

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

struct SafetensorsFile {
  std::shared_ptr<const MappedFile> mapping;
  std::vector<TensorInfo> tensors;  // in header order; offset_bytes absolute in the file
};

// Maps `path` and validates its header; every fault is a tandem::Error naming the file and,
// where there is one, the tensor.
SafetensorsFile open_safetensors(const std::filesystem::path& path);

}  // namespace tandem
