// TMA tensor maps (host side) for the sm90 kernels: cuTensorMapEncodeTiled, fetched through the
// runtime so nothing links libcuda (binaries must start on machines without a driver).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace tandem::ops::cuda {

// True where the driver offers cuTensorMapEncodeTiled.
bool tma_available();

// A row-major [rows, cols] bf16 tensor at `base` (rows row_bytes apart, a multiple of 16), read
// in boxes of box_cols x box_rows (box_cols * 2 = 128 bytes) that land in the 128-byte swizzle;
// out-of-range rows read as zeros. False if the driver refuses it.
bool encode_bf16_map(CUtensorMap* map, const void* base, uint64_t cols, uint64_t rows,
                     uint64_t row_bytes, uint32_t box_cols, uint32_t box_rows);

}  // namespace tandem::ops::cuda
