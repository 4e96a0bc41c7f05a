// Checkpoint: the tensors of a Hugging Face safetensors checkpoint, memory-mapped.
//
// Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
// N bytes of JSON {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]},
// "__metadata__": {str: str}}, then the data section; offsets are relative to its start.
// A sharded checkpoint adds model.safetensors.index.json whose "weight_map" maps each tensor
// name to the shard file holding it.
//
// Every header is validated at open (types, dtypes, sizes, ranges inside the file, no
// overlapping tensors) and any fault is a tandem::Error naming the file and the tensor, so a
// corrupt or truncated checkpoint can never make a view read outside its file.
//
// Sharded checkpoints: the shards named in weight_map are opened; each must hold every tensor
// listed for it, and no tensor may appear in two shards. Tensors a shard holds that weight_map
// does not list are included as well (the shard is the source of truth, as in transformers,
// which loads whole shards); shards the index never names are not opened. The index's
// metadata.total_size is not checked (published indexes do not always agree with their shards).
// Gaps between tensors in a data section are tolerated; overlaps are not.
//
// A view's address is the mapping base plus the tensor's offset; safetensors does not align
// tensors, so after a tensor whose byte size is not a multiple of 8 a view may be unaligned
// for its element type (the data section itself starts 8-byte aligned).
//
// Views returned by get() point into a read-only mapping (PROT_READ, MAP_PRIVATE): writing
// through them faults, so clone() a tensor before changing it in place. A view keeps its
// file's mapping alive after the Checkpoint is gone. A file truncated by another process after
// open can still raise SIGBUS on access; nothing in user space prevents that.
//
// Thread safety: immutable after open(); all const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tandem {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  std::string file;           // the .safetensors file holding it
  uint64_t offset_bytes = 0;  // absolute offset of the first byte within `file`
  uint64_t nbytes = 0;        // numel * dtype size
};

class MappedFile;

class Checkpoint {
 public:
  // `path` is a .safetensors file, a model.safetensors.index.json, or a directory holding
  // (in this order of preference) model.safetensors.index.json, model.safetensors, or exactly
  // one *.safetensors file.
  static Checkpoint open(const std::filesystem::path& path);
  // A checkpoint held in memory (`--load-format dummy`): contiguous CPU tensors by name;
  // `label` stands in for the file name in messages. Nothing is mapped; prefetch does nothing.
  static Checkpoint from_tensors(const std::string& label,
                                 std::vector<std::pair<std::string, Tensor>> tensors);

  bool has(const std::string& name) const;
  // Throws "checkpoint <path>: missing tensor '<name>'" when absent.
  const TensorInfo& info(const std::string& name) const;
  // A zero-copy CPU view into the mapping.
  Tensor get(const std::string& name) const;
  // The same, after checking the tensor has exactly this dtype and shape.
  Tensor get(const std::string& name, DType dtype, const Shape& shape) const;
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return entries_.size(); }
  uint64_t total_bytes() const { return total_bytes_; }  // sum of all tensors' nbytes
  const std::filesystem::path& path() const { return path_; }
  // The mapped files, in a stable order (index order for shards).
  std::vector<std::string> files() const;

  // Faults in every page of every mapped file once, with a ProgressBar "loading <path>", so
  // that a large load afterwards runs at memory speed instead of faulting from disk.
  void prefetch() const;

 private:
  struct Entry {
    TensorInfo info;
    const uint8_t* data = nullptr;
    std::shared_ptr<const void> mapping;  // the MappedFile, or the in-memory tensor
  };
  std::filesystem::path path_;
  std::map<std::string, Entry> entries_;
  std::vector<std::shared_ptr<const MappedFile>> mappings_;
  uint64_t total_bytes_ = 0;
};

}  // namespace tandem
