// Little-endian byte writer and a bounds-checked reader for the PD control messages and the
// tcp transport's frames. The reader never reads past its span: every getter returns false
// (and latches failed()) instead, so malformed input becomes a returned error, never UB.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace tandem::disagg {

class ByteWriter {
 public:
  void u8(uint8_t v) { buf_.push_back(v); }
  void u16(uint16_t v) { put_le(v, 2); }
  void u32(uint32_t v) { put_le(v, 4); }
  void u64(uint64_t v) { put_le(v, 8); }
  void i32(int32_t v) { u32(uint32_t(v)); }
  void f32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    u32(bits);
  }
  void bytes(std::span<const uint8_t> b) {  // u32 length, then the bytes
    u32(uint32_t(b.size()));
    buf_.insert(buf_.end(), b.begin(), b.end());
  }
  void str(const std::string& s) {
    bytes({reinterpret_cast<const uint8_t*>(s.data()), s.size()});
  }
  std::vector<uint8_t>& buffer() { return buf_; }

 private:
  void put_le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) buf_.push_back(uint8_t(v >> (8 * i)));
  }
  std::vector<uint8_t> buf_;
};

class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> data) : data_(data) {}
  bool u8(uint8_t* v) { return get_le(v, 1); }
  bool u16(uint16_t* v) { return get_le(v, 2); }
  bool u32(uint32_t* v) { return get_le(v, 4); }
  bool u64(uint64_t* v) { return get_le(v, 8); }
  bool i32(int32_t* v) {
    uint32_t u;
    if (!u32(&u)) return false;
    *v = int32_t(u);
    return true;
  }
  bool f32(float* v) {
    uint32_t bits;
    if (!u32(&bits)) return false;
    std::memcpy(v, &bits, 4);
    return true;
  }
  bool bytes(std::vector<uint8_t>* out, uint32_t max_len) {
    uint32_t n;
    if (!u32(&n) || n > max_len || n > remaining()) return fail();
    out->assign(data_.begin() + pos_, data_.begin() + pos_ + n);
    pos_ += n;
    return true;
  }
  bool str(std::string* out, uint32_t max_len) {
    uint32_t n;
    if (!u32(&n) || n > max_len || n > remaining()) return fail();
    out->assign(reinterpret_cast<const char*>(data_.data()) + pos_, n);
    pos_ += n;
    return true;
  }
  // Reads an element count and checks that `count * min_elem_bytes` could still follow, so a
  // forged count cannot make the caller allocate gigabytes.
  bool count(uint32_t* n, size_t min_elem_bytes, uint32_t max_count) {
    if (!u32(n) || *n > max_count || size_t(*n) * min_elem_bytes > remaining()) return fail();
    return true;
  }
  size_t remaining() const { return data_.size() - pos_; }
  bool failed() const { return failed_; }
  bool fail() {
    failed_ = true;
    return false;
  }

 private:
  template <class T>
  bool get_le(T* v, int n) {
    if (failed_ || remaining() < size_t(n)) return fail();
    uint64_t x = 0;
    for (int i = 0; i < n; ++i) x |= uint64_t(data_[pos_ + i]) << (8 * i);
    pos_ += n;
    *v = T(x);
    return true;
  }
  std::span<const uint8_t> data_;
  size_t pos_ = 0;
  bool failed_ = false;
};

}  // namespace tandem::disagg
