#include "model/checkpoint.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/progress.h"
#include "model/safetensors_file.h"

namespace tandem {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

json read_json_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  TANDEM_CHECK(in, "{}: cannot open", path.string());
  std::stringstream text;
  text << in.rdbuf();
  TANDEM_CHECK(!in.bad(), "{}: read failed", path.string());
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {
    TANDEM_FAIL("{}: not valid JSON: {}", path.string(), e.what());
  }
}

// The shard file names of an index, in weight_map order of first mention; each tensor's
// shard in `shard_of`.
std::vector<std::string> read_index(const fs::path& index, std::map<std::string, std::string>* shard_of) {
  const std::string file = index.string();
  const json j = read_json_file(index);
  TANDEM_CHECK(j.is_object(), "{}: index is a JSON {}, expected an object", file, j.type_name());
  const auto map_it = j.find("weight_map");
  TANDEM_CHECK(map_it != j.end(), "{}: index has no 'weight_map'", file);
  TANDEM_CHECK(map_it->is_object(), "{}: 'weight_map' is a JSON {}, expected an object", file,
               map_it->type_name());
  std::vector<std::string> shards;
  for (const auto& [name, shard] : map_it->items()) {
    TANDEM_CHECK(shard.is_string(), "{}: weight_map entry for tensor '{}' is a JSON {}, expected "
                 "a file name", file, name, shard.type_name());
    const std::string shard_name = shard.get<std::string>();
    // Shards live beside the index; a path elsewhere is a malformed (or hostile) index.
    const fs::path p(shard_name);
    TANDEM_CHECK(!shard_name.empty() && p.filename() == p && shard_name != "." && shard_name != "..",
                 "{}: weight_map entry for tensor '{}' names shard '{}', expected a plain file "
                 "name in the same directory", file, name, shard_name);
    if (std::find(shards.begin(), shards.end(), shard_name) == shards.end()) {
      shards.push_back(shard_name);
    }
    (*shard_of)[name] = shard_name;
  }
  return shards;
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& path) {
  Checkpoint ckpt;
  ckpt.path_ = path;
  const std::string where = path.string();
  std::error_code ec;
  TANDEM_CHECK(fs::exists(path, ec), "checkpoint {}: no such file or directory", where);

  fs::path index, single;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / kIndexName, ec)) {
      index = path / kIndexName;
    } else if (fs::exists(path / kSingleName, ec)) {
      single = path / kSingleName;
    } else {
      std::vector<fs::path> found;
      for (const auto& e : fs::directory_iterator(path, ec)) {
        if (e.path().extension() == ".safetensors" && e.is_regular_file(ec)) found.push_back(e.path());
      }
      TANDEM_CHECK(found.size() == 1, "checkpoint {}: no {} or {}, and {} *.safetensors files "
                   "(expected exactly one)", where, kIndexName, kSingleName, found.size());
      single = found[0];
    }
  } else if (ends_with(path.filename().string(), ".index.json")) {
    index = path;
  } else {
    single = path;
  }

  auto add = [&](const SafetensorsFile& f) {
    for (const TensorInfo& t : f.tensors) {
      const auto [it, inserted] = ckpt.entries_.try_emplace(t.name);
      TANDEM_CHECK(inserted, "checkpoint {}: tensor '{}' is in two shards, {} and {}", where,
                   t.name, it->second.info.file, t.file);
      it->second.info = t;
      it->second.data = f.mapping->data() + t.offset_bytes;
      it->second.mapping = f.mapping;
      ckpt.total_bytes_ += t.nbytes;
    }
    ckpt.mappings_.push_back(f.mapping);
  };

  if (!single.empty()) {
    add(open_safetensors(single));
    return ckpt;
  }

  std::map<std::string, std::string> shard_of;
  const std::vector<std::string> shards = read_index(index, &shard_of);
  const fs::path dir = index.parent_path();
  for (const std::string& shard : shards) {
    const fs::path shard_path = dir / shard;
    if (!fs::exists(shard_path, ec)) {
      const auto listed = std::find_if(shard_of.begin(), shard_of.end(),
                                       [&](const auto& kv) { return kv.second == shard; });
      TANDEM_FAIL("{}: shard '{}' (listed for tensor '{}') is missing: {}", index.string(), shard,
                  listed->first, shard_path.string());
    }
    add(open_safetensors(shard_path));
  }
  for (const auto& [name, shard] : shard_of) {
    const auto it = ckpt.entries_.find(name);
    const std::string shard_file = (dir / shard).string();
    TANDEM_CHECK(it != ckpt.entries_.end() && it->second.info.file == shard_file,
                 "{}: tensor '{}' is listed in weight_map for {} but absent from it{}",
                 index.string(), name, shard_file,
                 it == ckpt.entries_.end() ? "" : " (it is in " + it->second.info.file + ")");
  }
  return ckpt;
}

bool Checkpoint::has(const std::string& name) const { return entries_.count(name) > 0; }

Checkpoint Checkpoint::from_tensors(const std::string& label,
                                   std::vector<std::pair<std::string, Tensor>> tensors) {
  Checkpoint ckpt;
  ckpt.path_ = label;
  for (auto& [name, tensor] : tensors) {
    TANDEM_CHECK(tensor.device().is_cpu() && tensor.is_contiguous(),
                 "{}: tensor '{}' must be a contiguous CPU tensor", label, name);
    TANDEM_CHECK(!ckpt.entries_.count(name), "{}: tensor '{}' given twice", label, name);
    Entry e;
    e.info = {name, tensor.dtype(), tensor.shape(), label, 0, tensor.nbytes()};
    e.data = static_cast<const uint8_t*>(tensor.raw_data());
    e.mapping = std::make_shared<const Tensor>(std::move(tensor));
    ckpt.total_bytes_ += e.info.nbytes;
    ckpt.entries_.emplace(name, std::move(e));
  }
  return ckpt;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  const auto it = entries_.find(name);
  TANDEM_CHECK(it != entries_.end(), "checkpoint {}: missing tensor '{}'", path_.string(), name);
  return it->second.info;
}

Tensor Checkpoint::get(const std::string& name) const {
  const TensorInfo& i = info(name);
  const Entry& e = entries_.find(name)->second;
  // The aliasing shared_ptr keeps the whole file mapped while this view lives. The cast drops
  // const only because Tensor has no const views; the pages are PROT_READ.
  std::shared_ptr<void> owner(e.mapping, const_cast<uint8_t*>(e.data));
  return Tensor::from_blob(const_cast<uint8_t*>(e.data), i.shape, i.dtype, Device::cpu(),
                           std::move(owner));
}

Tensor Checkpoint::get(const std::string& name, DType dtype, const Shape& shape) const {
  const TensorInfo& i = info(name);
  TANDEM_CHECK(i.dtype == dtype && i.shape == shape,
               "{}: tensor '{}' has shape {} dtype {}, expected {} {}", i.file, name,
               shape_str(i.shape), dtype_name(i.dtype), shape_str(shape), dtype_name(dtype));
  return get(name);
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

std::vector<std::string> Checkpoint::files() const {
  std::vector<std::string> out;
  for (const auto& m : mappings_) out.push_back(m->path());
  return out;
}

void Checkpoint::prefetch() const {
  uint64_t total = 0;
  for (const auto& m : mappings_) total += m->size();
  ProgressBar bar("loading " + path_.string(), total);
  for (const auto& m : mappings_) m->prefetch(bar);
  bar.finish();
}

}  // namespace tandem
