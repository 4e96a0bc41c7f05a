#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <mutex>

namespace tandem {

namespace {

// A function-local table, so a backend may register from its own static initializer: a
// namespace-scope array would be (re)initialized in core's turn, after or before the backend's.
DeviceAllocator* allocators() {
  static DeviceAllocator table[2];
  return table;
}

const DeviceAllocator& allocator_for(Device device) {
  const DeviceAllocator& a = allocators()[int(device.type)];
  TANDEM_CHECK(a.alloc, "no allocator for device {}: this build has no {} backend",
               device.name(), device.name());
  return a;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

int normalize_dim(int d, int ndim) {
  const int r = d < 0 ? d + ndim : d;
  TANDEM_CHECK(r >= 0 && r < ndim, "dimension {} out of range for a {}-d tensor", d, ndim);
  return r;
}

}  // namespace

std::string Device::name() const {
  return is_cpu() ? "cpu" : fmt::format("cuda:{}", index);
}

void register_device_allocator(DeviceType type, DeviceAllocator allocator) {
  allocators()[int(type)] = std::move(allocator);
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  for (int64_t d : shape) TANDEM_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.defined_ = true;
  const size_t bytes = t.nbytes();
  if (device.is_cpu()) {
    // 64-byte alignment for vector loads; at least one cache line so data_ is never null.
    const size_t padded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, padded);
    TANDEM_CHECK(p, "out of host memory allocating {} bytes for {}", bytes, shape_str(shape));
    t.owner_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  } else {
    const DeviceAllocator& a = allocator_for(device);
    void* p = a.alloc(std::max<size_t>(bytes, 1), device.index);
    TANDEM_CHECK(p, "out of device memory on {} allocating {} bytes for {}", device.name(),
                 bytes, shape_str(shape));
    auto free_fn = a.free;
    const int index = device.index;
    t.owner_ = std::shared_ptr<void>(p, [free_fn, index](void* q) { free_fn(q, index); });
  }
  t.data_ = t.owner_.get();
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device.is_cpu()) {
    std::memset(t.data_, 0, t.nbytes());
  } else if (const DeviceAllocator& a = allocator_for(device); a.zero) {
    a.zero(t.data_, t.nbytes(), device.index);
  } else {
    Tensor host = zeros(shape, dtype);
    t.copy_from(host);
  }
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device,
                         std::shared_ptr<void> owner) {
  Tensor t;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.data_ = data;
  t.owner_ = std::move(owner);
  t.defined_ = true;
  return t;
}

int64_t Tensor::size(int d) const { return shape_[normalize_dim(d, dim())]; }
int64_t Tensor::stride(int d) const { return strides_[normalize_dim(d, dim())]; }

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

Tensor Tensor::view(const Shape& shape) const {
  TANDEM_CHECK(is_contiguous(), "view of a non-contiguous tensor {}", describe());
  Shape s = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      TANDEM_CHECK(infer < 0, "view: more than one -1 in {}", shape_str(shape));
      infer = int(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    TANDEM_CHECK(known > 0 && numel() % known == 0, "view: cannot infer {} from {}",
                 shape_str(shape), describe());
    s[infer] = numel() / known;
    known *= s[infer];
  }
  TANDEM_CHECK(known == numel(), "view: {} does not match {}", shape_str(s), describe());
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int d, int64_t start, int64_t end) const {
  d = normalize_dim(d, dim());
  TANDEM_CHECK(0 <= start && start <= end && end <= shape_[d],
               "slice [{}, {}) out of range for dimension {} of {}", start, end, d, describe());
  Tensor t = *this;
  t.shape_[d] = end - start;
  t.data_ = static_cast<char*>(data_) + start * strides_[d] * int64_t(dtype_size_bytes(dtype_));
  return t;
}

Tensor Tensor::select(int d, int64_t index) const {
  d = normalize_dim(d, dim());
  Tensor t = slice(d, index, index + 1);
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::unsqueeze(int d) const {
  const int nd = dim();
  if (d < 0) d += nd + 1;
  TANDEM_CHECK(d >= 0 && d <= nd, "unsqueeze: dimension {} out of range for {}", d, describe());
  Tensor t = *this;
  const int64_t stride = d < nd ? strides_[d] * shape_[d] : 1;
  t.shape_.insert(t.shape_.begin() + d, 1);
  t.strides_.insert(t.strides_.begin() + d, stride);
  return t;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device_);
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor out = empty(shape_, dtype_, device);
  out.copy_from(*this);
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  TANDEM_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy_from: {} into {}",
               src.describe(), describe());
  if (device_.is_cpu() && src.device_.is_cpu()) {
    if (is_contiguous() && src.is_contiguous()) {
      std::memcpy(data_, src.data_, nbytes());
      return;
    }
    // Strided element-wise copy through a multi-index.
    const size_t es = dtype_size_bytes(dtype_);
    const int nd = dim();
    std::vector<int64_t> idx(nd, 0);
    const int64_t n = numel();
    for (int64_t i = 0; i < n; ++i) {
      int64_t so = 0, doff = 0;
      for (int k = 0; k < nd; ++k) {
        so += idx[k] * src.strides_[k];
        doff += idx[k] * strides_[k];
      }
      std::memcpy(static_cast<char*>(data_) + doff * es,
                  static_cast<const char*>(src.data_) + so * es, es);
      for (int k = nd - 1; k >= 0; --k) {
        if (++idx[k] < shape_[k]) break;
        idx[k] = 0;
      }
    }
    return;
  }
  TANDEM_CHECK(is_contiguous() && src.is_contiguous(),
               "copy between devices needs contiguous tensors: {} <- {}", describe(),
               src.describe());
  const Device dev = device_.is_cpu() ? src.device_ : device_;
  allocator_for(dev).copy(data_, src.data_, nbytes(), device_, src.device_);
}

std::string Tensor::describe() const {
  if (!defined_) return "(undefined tensor)";
  return fmt::format("{}{} {}", dtype_name(dtype_), shape_str(shape_), device_.name());
}

float load_as_f32(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(base)[index];
    case DType::kBF16: return bf16_to_f32(static_cast<const bf16*>(base)[index]);
    case DType::kF8E4M3: return fp8_e4m3_to_f32(static_cast<const fp8_e4m3*>(base)[index]);
    default: TANDEM_FAIL("load_as_f32: {} is not a float dtype", dtype_name(dtype));
  }
}

void store_from_f32(void* base, DType dtype, int64_t index, float value) {
  switch (dtype) {
    case DType::kF32: static_cast<float*>(base)[index] = value; return;
    case DType::kBF16: static_cast<bf16*>(base)[index] = f32_to_bf16(value); return;
    case DType::kF8E4M3: static_cast<fp8_e4m3*>(base)[index] = f32_to_fp8_e4m3(value); return;
    default: TANDEM_FAIL("store_from_f32: {} is not a float dtype", dtype_name(dtype));
  }
}

Tensor cast(const Tensor& t, DType dtype) {
  Tensor src = t.device().is_cpu() ? t.contiguous() : t.to(Device::cpu()).contiguous();
  if (src.dtype() == dtype) return src.clone();
  Tensor out = Tensor::empty(src.shape(), dtype);
  const int64_t n = src.numel();
  for (int64_t i = 0; i < n; ++i)
    store_from_f32(out.raw_data(), dtype, i, load_as_f32(src.raw_data(), src.dtype(), i));
  return out;
}

Tensor to_f32(const Tensor& t) { return cast(t, DType::kF32); }

}  // namespace tandem
