// Tensor: shape, strides, dtype and device over a shared buffer. A tensor either owns its
// buffer (empty/zeros) or views one owned by someone else (a memory-mapped checkpoint, a
// slice of another tensor); views keep the owner alive through a shared_ptr.
// Not thread-safe for mutation of the same elements; distinct tensors are independent.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace tandem {

enum class DeviceType : uint8_t { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {DeviceType::kCUDA, index}; }
  bool is_cpu() const { return type == DeviceType::kCPU; }
  bool is_cuda() const { return type == DeviceType::kCUDA; }
  bool operator==(const Device&) const = default;
  std::string name() const;  // "cpu", "cuda:0"
};

// Device memory comes from a backend that registers itself (ops/cuda does for CUDA), so core
// never links a vendor library. alloc returns nullptr on failure.
struct DeviceAllocator {
  std::function<void*(size_t bytes, int device_index)> alloc;
  std::function<void(void* ptr, int device_index)> free;
  std::function<void(void* dst, const void* src, size_t bytes, Device dst_dev, Device src_dev)>
      copy;
  // Sets `bytes` at dst to zero, queued in the backend's stream order (no host round trip).
  std::function<void(void* dst, size_t bytes, int device_index)> zero;
};
void register_device_allocator(DeviceType type, DeviceAllocator allocator);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);  // "[2, 3]"

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::kF32; }
template <> constexpr DType dtype_of<bf16>() { return DType::kBF16; }
template <> constexpr DType dtype_of<fp8_e4m3>() { return DType::kF8E4M3; }
template <> constexpr DType dtype_of<int32_t>() { return DType::kI32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::kI64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::kU8; }

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // A view of memory owned by `owner` (may be null when the caller guarantees lifetime).
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device,
                          std::shared_ptr<void> owner);
  // A CPU tensor holding a copy of `values`.
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);

  bool defined() const { return defined_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return int(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t stride(int d) const;
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size_bytes(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_contiguous() const;

  void* raw_data() const { return data_; }
  template <class T>
  T* data() const {
    TANDEM_CHECK(dtype_ == dtype_of<T>(), "tensor is {}, accessed as {}", dtype_name(dtype_),
                 dtype_name(dtype_of<T>()));
    return static_cast<T*>(data_);
  }

  // Views (share the buffer).
  Tensor view(const Shape& shape) const;  // contiguous only; one dimension may be -1
  Tensor slice(int d, int64_t start, int64_t end) const;
  Tensor select(int d, int64_t index) const;  // drops dimension d
  Tensor unsqueeze(int d) const;              // inserts a size-1 dimension at d (any strides)

  // Copies.
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(Device device) const;
  void copy_from(const Tensor& src);  // same shape and dtype; any devices

  std::string describe() const;  // "bf16[2, 3] cpu"

 private:
  std::shared_ptr<void> owner_;
  void* data_ = nullptr;
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::kF32;
  Device device_;
  bool defined_ = false;
};

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  Tensor t = empty(shape, dtype_of<T>());
  TANDEM_CHECK(size_t(t.numel()) == values.size(), "from_vector: {} values for shape {}",
               values.size(), shape_str(shape));
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}

// Host-side element access for any float dtype (f32, bf16, fp8): used by reference kernels
// and tests, never in hot loops of device code.
float load_as_f32(const void* base, DType dtype, int64_t index);
void store_from_f32(void* base, DType dtype, int64_t index, float value);

// Returns a contiguous f32 CPU copy of a float tensor (any float dtype).
Tensor to_f32(const Tensor& t);
// Returns a contiguous CPU copy converted to `dtype` (float dtypes).
Tensor cast(const Tensor& t, DType dtype);

}  // namespace tandem
