#!/usr/bin/env bash
# The expert-parallel GPU cycle for the 2-GPU machine (`run` with kind nvidia-h200-x2): the
# `cuda_dispatch_test` tests (NCCL group, GPU normal and low_latency dispatch/combine against
# the CPU dispatchers, CUDA-graph replay, over-capacity error), `ep_cuda_model_test` (EP=2 on
# two GPUs equals EP=1 on one) and the `ep_bench` timings, each
# under `timeout`; logs in $OUT (or ./out), the benchmark table last.
#
# Binaries are built on the dev box and carried (docs/parallel.md):
#   cmake --build build/<dir> -j2 --target cuda_dispatch_test ep_cuda_model_test ep_bench
#   tools/device/pack_devbin.sh build/<dir>     (copies them when present)
# then `run` with carry [".devbin"] and command `bash tools/device/ep_cycle.sh`.
# EP_BIN / EP_LIB override the binary and library folders. libnccl.so.2 is not carried (218 MB):
# tandem dlopens it, and this script finds the copy of the GPU machine's PyTorch (nvidia-nccl).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
# NVLink multicast stays off (it can take a shared host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
bin=${EP_BIN:-$PWD/.devbin/bin}
lib=${EP_LIB:-$PWD/.devbin/lib}

nccl_dir=$(python3 -c 'import nvidia.nccl as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)
if [[ ! -e "$nccl_dir/libnccl.so.2" ]]; then
  nccl_dir=$(dirname "$(find / -name libnccl.so.2 -not -path '/proc/*' 2>/dev/null | head -1)" 2>/dev/null)
fi
export LD_LIBRARY_PATH=$lib:${nccl_dir}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}

{
  echo "== env"; date -u; uname -r
  nvidia-smi --query-gpu=index,name,driver_version,memory.used --format=csv
  nvidia-smi topo -m
  echo "libnccl.so.2 from: ${nccl_dir:-not found}"
  ls -la "$bin" 2>&1
  ldd "$bin/cuda_dispatch_test" 2>&1 | grep -E "not found|fmt|spdlog" || true
} > "$OUT/ep_env.txt" 2>&1

status=0
timeout "${EP_TEST_TIMEOUT_S:-240}" "$bin/cuda_dispatch_test" > "$OUT/ep_tests.log" 2>&1
rc=$?
[[ $rc -ne 0 ]] && { status=1; echo "cuda_dispatch_test rc=$rc (124: timed out)" >> "$OUT/ep_tests.log"; }
timeout "${EP_TEST_TIMEOUT_S:-240}" "$bin/ep_cuda_model_test" > "$OUT/ep_model.log" 2>&1
rc=$?
[[ $rc -ne 0 ]] && { status=1; echo "ep_cuda_model_test rc=$rc (124: timed out)" >> "$OUT/ep_model.log"; }
timeout "${EP_BENCH_TIMEOUT_S:-200}" "$bin/ep_bench" ${EP_BENCH_ARGS:-} > "$OUT/ep_bench.log" 2>&1
rc=$?
[[ $rc -ne 0 ]] && { status=1; echo "ep_bench rc=$rc (124: timed out)" >> "$OUT/ep_bench.log"; }

echo "== env"; tail -n 12 "$OUT/ep_env.txt"
echo "== cuda_dispatch_test"; grep -E "^\[  (FAILED|PASSED|SKIPPED) |^\[==========\]|Failure|rc=" "$OUT/ep_tests.log" | head -40
grep -B2 -A12 "Failure" "$OUT/ep_tests.log" | head -60
echo "== ep_cuda_model_test"; grep -E "^\[  (FAILED|PASSED|SKIPPED) |^\[==========\]|Failure|max \|logit|rc=" "$OUT/ep_model.log" | head -20
grep -A8 "Failure" "$OUT/ep_model.log" | head -30
echo "== ep_bench"; cat "$OUT/ep_bench.log"
exit $status
