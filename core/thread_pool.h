// A fixed pool of worker threads for the CPU kernels. parallel_for splits [0, n) into chunks
// of at least `grain` items; the calling thread takes part. A parallel_for issued from inside
// a worker runs inline (no nested fan-out, no deadlock). Thread-safe: any thread may call it.
#pragma once

#include <cstdint>
#include <functional>

namespace tandem {

// Number of threads the CPU kernels use: TANDEM_NUM_THREADS if set, else the hardware count.
int cpu_num_threads();
void set_cpu_num_threads(int n);  // takes effect for the next parallel_for; n >= 1

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace tandem
