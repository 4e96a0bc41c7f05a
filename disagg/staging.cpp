#include "disagg/staging.h"

#include <cstdlib>
#include <string>

#ifdef TANDEM_DISAGG_CUDA
#include <cuda_runtime_api.h>
#endif

namespace tandem::disagg {

#ifdef TANDEM_DISAGG_CUDA
namespace {
Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return {};
  return {StatusCode::kInternal, std::string(what) + ": " + cudaGetErrorString(e)};
}
}  // namespace

bool staging_has_cuda() { return true; }
void* staging_alloc_host(size_t bytes) {
  void* p = nullptr;
  if (cudaMallocHost(&p, bytes) != cudaSuccess) return nullptr;
  return p;
}
void staging_free_host(void* ptr) {
  if (ptr) cudaFreeHost(ptr);
}
Status staging_copy_to_host(void* dst_host, const void* src_device, size_t bytes, int device) {
  if (Status s = cuda_status(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  return cuda_status(cudaMemcpy(dst_host, src_device, bytes, cudaMemcpyDeviceToHost),
                     "staging cudaMemcpy D2H");
}
Status staging_copy_to_device(void* dst_device, const void* src_host, size_t bytes, int device) {
  if (Status s = cuda_status(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  return cuda_status(cudaMemcpy(dst_device, src_host, bytes, cudaMemcpyHostToDevice),
                     "staging cudaMemcpy H2D");
}
#else
bool staging_has_cuda() { return false; }
void* staging_alloc_host(size_t bytes) { return std::malloc(bytes); }
void staging_free_host(void* ptr) { std::free(ptr); }
Status staging_copy_to_host(void*, const void*, size_t, int) {
  return {StatusCode::kInvalidArgument, "device memory needs a CUDA build"};
}
Status staging_copy_to_device(void*, const void*, size_t, int) {
  return {StatusCode::kInvalidArgument, "device memory needs a CUDA build"};
}
#endif

}  // namespace tandem::disagg
