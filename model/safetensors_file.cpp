#include "model/safetensors_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

namespace tandem {

namespace fs = std::filesystem;
using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little,
              "safetensors stores the header length little-endian; big-endian hosts need a swap");

std::string safetensors_dtype_name(DType dtype) {
  std::string name(dtype_name(dtype));  // tandem's names are the safetensors ones, lower-cased
  for (char& c : name) c = char(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

// ---- MappedFile ----

std::shared_ptr<const MappedFile> MappedFile::open(const fs::path& path) {
  const std::string name = path.string();
  const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  TANDEM_CHECK(fd >= 0, "{}: cannot open: {}", name, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    TANDEM_FAIL("{}: cannot stat: {}", name, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    TANDEM_FAIL("{}: not a regular file", name);
  }
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->path_ = name;
  file->size_ = uint64_t(st.st_size);
  if (file->size_ > 0) {
    void* p = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping holds its own reference to the file
    TANDEM_CHECK(p != MAP_FAILED, "{}: mmap of {} bytes failed: {}", name, file->size_,
                 std::strerror(err));
    file->data_ = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  return file;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::prefetch(ProgressBar& bar) const {
  if (!data_) return;
  constexpr uint64_t kChunkBytes = 64ull << 20;  // a multiple of any page size
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  auto* base = const_cast<uint8_t*>(data_);
  auto chunk_len = [&](uint64_t off) { return std::min(kChunkBytes, size_ - off); };
  ::madvise(base, chunk_len(0), MADV_WILLNEED);
  volatile uint8_t sink = 0;
  for (uint64_t off = 0; off < size_; off += kChunkBytes) {
    const uint64_t len = chunk_len(off);
    // Start reading the next chunk while this one is faulted in, to keep the disk busy.
    if (off + len < size_) ::madvise(base + off + len, chunk_len(off + len), MADV_WILLNEED);
    bool populated = false;
#ifdef MADV_POPULATE_READ
    populated = ::madvise(base + off, len, MADV_POPULATE_READ) == 0;  // Linux >= 5.14
#endif
    if (!populated) {
      for (uint64_t p = off; p < off + len; p += page) sink = sink + data_[p];
    }
    bar.advance(len);
  }
  (void)sink;
}

// ---- header validation ----

namespace {

// Finds a repeated top-level key in one SAX pass over the header. (nlohmann keeps the last
// of two equal keys silently, which would hide a tensor; its parse callback could see keys
// too, but it rescans the parent object at every nested object end: quadratic in tensors.)
class DuplicateKeyFinder : public nlohmann::json_sax<json> {
 public:
  std::string duplicate;

  bool key(string_t& k) override {
    if (depth_ == 1 && duplicate.empty() && !keys_.insert(k).second) duplicate = k;
    return true;
  }
  bool start_object(std::size_t) override { return ++depth_, true; }
  bool end_object() override { return --depth_, true; }
  bool start_array(std::size_t) override { return ++depth_, true; }
  bool end_array() override { return --depth_, true; }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }

 private:
  int depth_ = 0;
  std::set<std::string> keys_;
};

json parse_header(const std::string& file, std::string_view text) {
  json header;
  try {
    header = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    TANDEM_FAIL("{}: header is not valid JSON: {}", file, e.what());
  }
  TANDEM_CHECK(header.is_object(), "{}: header is a JSON {}, expected an object", file,
               header.type_name());
  DuplicateKeyFinder finder;
  json::sax_parse(text.begin(), text.end(), &finder);
  TANDEM_CHECK(finder.duplicate.empty(), "{}: tensor '{}' appears twice in the header", file,
               finder.duplicate);
  return header;
}

void check_metadata(const std::string& file, const json& metadata) {
  TANDEM_CHECK(metadata.is_object(), "{}: __metadata__ is a JSON {}, expected an object of strings",
               file, metadata.type_name());
  for (const auto& [key, value] : metadata.items()) {
    TANDEM_CHECK(value.is_string(), "{}: __metadata__ entry '{}' is a JSON {}, expected a string",
                 file, key, value.type_name());
  }
}

// Validates one tensor entry; `data_bytes` is the size of the data section, which starts at
// `data_start` in the file.
TensorInfo parse_entry(const std::string& file, const std::string& name, const json& entry,
                       uint64_t data_start, uint64_t data_bytes) {
  TANDEM_CHECK(entry.is_object(), "{}: tensor '{}': entry is a JSON {}, expected an object", file,
               name, entry.type_name());
  TensorInfo info;
  info.name = name;
  info.file = file;

  const auto dtype_it = entry.find("dtype");
  TANDEM_CHECK(dtype_it != entry.end(), "{}: tensor '{}': missing 'dtype'", file, name);
  TANDEM_CHECK(dtype_it->is_string(), "{}: tensor '{}': 'dtype' is a JSON {}, expected a string",
               file, name, dtype_it->type_name());
  const std::string dtype = dtype_it->get<std::string>();
  // Only the upper-case safetensors spellings; dtype_from_name also accepts tandem's own.
  TANDEM_CHECK(dtype_from_name(dtype, &info.dtype) && safetensors_dtype_name(info.dtype) == dtype,
               "{}: tensor '{}' has unsupported dtype '{}' (supported: BF16, F32, F8_E4M3, I32, "
               "I64, U8)", file, name, dtype);

  const auto shape_it = entry.find("shape");
  TANDEM_CHECK(shape_it != entry.end(), "{}: tensor '{}': missing 'shape'", file, name);
  TANDEM_CHECK(shape_it->is_array(), "{}: tensor '{}': 'shape' is a JSON {}, expected an array",
               file, name, shape_it->type_name());
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : *shape_it) {
    TANDEM_CHECK(d.is_number_integer(), "{}: tensor '{}': shape {} has a non-integer dimension",
                 file, name, shape_it->dump());
    TANDEM_CHECK(d.is_number_unsigned(), "{}: tensor '{}': shape {} has a negative dimension",
                 file, name, shape_it->dump());
    const uint64_t dim = d.get<uint64_t>();
    TANDEM_CHECK(dim <= uint64_t(INT64_MAX), "{}: tensor '{}': dimension {} is too large", file,
                 name, dim);
    info.shape.push_back(int64_t(dim));
    overflow |= __builtin_mul_overflow(numel, dim, &numel);
  }

  const auto off_it = entry.find("data_offsets");
  TANDEM_CHECK(off_it != entry.end(), "{}: tensor '{}': missing 'data_offsets'", file, name);
  TANDEM_CHECK(off_it->is_array() && off_it->size() == 2 && (*off_it)[0].is_number_unsigned() &&
                   (*off_it)[1].is_number_unsigned(),
               "{}: tensor '{}': data_offsets {} is not [begin, end] of non-negative integers",
               file, name, off_it->dump());
  const uint64_t begin = (*off_it)[0].get<uint64_t>(), end = (*off_it)[1].get<uint64_t>();
  TANDEM_CHECK(begin <= end, "{}: tensor '{}': data_offsets [{}, {}] has begin > end", file, name,
               begin, end);
  TANDEM_CHECK(end <= data_bytes,
               "{}: tensor '{}': data_offsets [{}, {}] end beyond the {}-byte data section "
               "(truncated file?)", file, name, begin, end, data_bytes);

  uint64_t nbytes = 0;
  overflow |= __builtin_mul_overflow(numel, uint64_t(dtype_size_bytes(info.dtype)), &nbytes);
  TANDEM_CHECK(!overflow && nbytes == end - begin,
               "{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets [{}, {}] hold {}",
               file, name, shape_str(info.shape), dtype, overflow ? "too many" : std::to_string(nbytes),
               begin, end, end - begin);
  info.offset_bytes = data_start + begin;
  info.nbytes = nbytes;
  return info;
}

}  // namespace

SafetensorsFile open_safetensors(const fs::path& path) {
  SafetensorsFile out;
  out.mapping = MappedFile::open(path);
  const MappedFile& m = *out.mapping;
  const std::string& file = m.path();
  TANDEM_CHECK(m.size() >= 8, "{}: file is {} bytes, shorter than the 8-byte header length", file,
               m.size());
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, m.data(), 8);
  TANDEM_CHECK(header_bytes <= kSafetensorsMaxHeaderBytes,
               "{}: header length {} is absurd (limit {} bytes); not a safetensors file?", file,
               header_bytes, kSafetensorsMaxHeaderBytes);
  TANDEM_CHECK(header_bytes <= m.size() - 8,
               "{}: header length {} is larger than the {} bytes that follow it (truncated file?)",
               file, header_bytes, m.size() - 8);
  const uint64_t data_start = 8 + header_bytes;
  const uint64_t data_bytes = m.size() - data_start;

  const json header = parse_header(
      file, std::string_view(reinterpret_cast<const char*>(m.data()) + 8, header_bytes));
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      check_metadata(file, entry);
      continue;
    }
    out.tensors.push_back(parse_entry(file, name, entry, data_start, data_bytes));
  }

  // No two tensors may share a byte (empty tensors occupy none). Gaps are allowed.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : out.tensors) {
    if (t.nbytes > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->offset_bytes < b->offset_bytes;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& a = *by_offset[i - 1];
    const TensorInfo& b = *by_offset[i];
    TANDEM_CHECK(b.offset_bytes >= a.offset_bytes + a.nbytes,
                 "{}: tensors '{}' (data_offsets [{}, {}]) and '{}' (data_offsets [{}, {}]) "
                 "overlap", file, a.name, a.offset_bytes - data_start,
                 a.offset_bytes - data_start + a.nbytes, b.name, b.offset_bytes - data_start,
                 b.offset_bytes - data_start + b.nbytes);
  }
  return out;
}

}  // namespace tandem
