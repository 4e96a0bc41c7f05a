// Writing safetensors checkpoints (tandem make-model, tests).
//
// Files are written to a temporary name beside the target and renamed into place when
// complete, so a crash never leaves a truncated file under a real checkpoint name. Tensor data
// goes to the file straight from the tensors' buffers (small tensors are batched into one
// buffered write), so multi-GB files write at page-cache speed with no per-element work.
//
// Thread safety: none; one thread owns a writer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace tandem {

// One .safetensors file.
class SafetensorsWriter {
 public:
  // Holds a reference to the tensor's buffer until write() (a non-contiguous tensor is copied
  // now, a device tensor is copied to the host now). Names must be unique, non-empty and not
  // "__metadata__".
  void add(const std::string& name, const Tensor& tensor);
  // Header JSON (with `metadata` as __metadata__ when non-empty) padded with spaces to a
  // multiple of 8 bytes, then the tensors packed in order of addition with no gaps (as the
  // safetensors reference implementation requires).
  void write(const std::filesystem::path& file,
             const std::map<std::string, std::string>& metadata = {}) const;

  size_t size() const { return tensors_.size(); }
  uint64_t data_bytes() const { return data_bytes_; }  // sum of the tensors' nbytes
  const std::vector<std::pair<std::string, Tensor>>& tensors() const { return tensors_; }
  void clear();

 private:
  std::vector<std::pair<std::string, Tensor>> tensors_;
  std::map<std::string, size_t> index_;  // name -> position, for the uniqueness check
  uint64_t data_bytes_ = 0;
};

// A sharded checkpoint written as tensors arrive, so memory stays bounded by one shard:
// add() buffers references to tensors and writes a shard once the next tensor would push it
// past max_shard_bytes of tensor data (a single larger tensor gets a shard of its own).
// Shards are written under temporary names, because the final names
// model-0000i-of-0000N.safetensors need N; finish() renames them, writes
// model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}), or, when
// everything fit in one shard, renames it to model.safetensors and writes no index. finish()
// also removes a stale index or model.safetensors of the other layout from `dir` so that
// Checkpoint::open finds the new files. Each shard's __metadata__ is {"format": "pt"}, which
// transformers requires when it loads the checkpoint.
// Destroying the writer without finish() deletes the shards it wrote.
class ShardedCheckpointWriter {
 public:
  ShardedCheckpointWriter(std::filesystem::path dir, uint64_t max_shard_bytes);
  ~ShardedCheckpointWriter();
  ShardedCheckpointWriter(const ShardedCheckpointWriter&) = delete;
  ShardedCheckpointWriter& operator=(const ShardedCheckpointWriter&) = delete;

  void add(const std::string& name, const Tensor& tensor);
  void finish();

 private:
  void flush_shard();

  std::filesystem::path dir_;
  uint64_t max_shard_bytes_;
  SafetensorsWriter current_;
  std::map<std::string, size_t> shard_of_;     // tensor -> shard number (0-based)
  std::vector<std::filesystem::path> written_;  // temporary shard files, in order
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

// Writes `tensors` into `dir` through ShardedCheckpointWriter (see there for the layout).
void write_sharded_checkpoint(const std::filesystem::path& dir,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              uint64_t max_shard_bytes);

}  // namespace tandem
