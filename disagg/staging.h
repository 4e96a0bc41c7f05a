// Device <-> host copies for the tcp transport's staging path. Only CUDA builds have device
// memory; without CUDA these return kInvalidArgument and device regions are refused.
#pragma once

#include <cstddef>

#include "core/error.h"

namespace tandem::disagg {

bool staging_has_cuda();
// Pinned host memory (plain malloc without CUDA); free with staging_free_host.
void* staging_alloc_host(size_t bytes);
void staging_free_host(void* ptr);
Status staging_copy_to_host(void* dst_host, const void* src_device, size_t bytes, int device);
Status staging_copy_to_device(void* dst_device, const void* src_host, size_t bytes, int device);

}  // namespace tandem::disagg
