#!/usr/bin/env bash
# The GPU cycle in one command, for the device machine (an H200 lent through the `run` tool):
# environment, build (or use binaries built on the dev box and carried in .devbin/), the
# `cuda`-labelled tests (op harness, golden on GPU), perf mode with the torch peer, and a short
# table last. Logs go to $OUT (or ./out when unset).
#
# Carried binaries (built on the dev box, which has no GPU; see docs/cuda.md):
#   cmake -S . -B build/cuda -G Ninja -DTANDEM_CUDA=ON -DTANDEM_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release
#   cmake --build build/cuda -j2 --target op_harness_test golden_cuda_test
#   tools/device/pack_devbin.sh
# then `run` with carry [".devbin"] and command `bash tools/device/cuda_cycle.sh`.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
root=$PWD

{
  echo "== env"; date -u; uname -r; ldd --version | head -1
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv
  command -v nvcc && nvcc --version | tail -1
  command -v cmake && cmake --version | head -1
  for t in ninja g++ pkg-config; do printf '%s: ' "$t"; command -v "$t" || echo missing; done
  git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "(no git)"
} > "$OUT/env.txt" 2>&1

# Test binaries carry TANDEM_SOURCE_DIR of the dev box (/work/main) for the golden data.
src_dir=${TANDEM_DEV_SOURCE_DIR:-/work/main}
if [[ -n "$src_dir" && "$src_dir" != "$root" && ! -e "$src_dir" ]]; then
  mkdir -p "$(dirname "$src_dir")" && ln -s "$root" "$src_dir"
fi

bin=$root/.devbin/bin
if [[ -x $bin/op_harness_test ]]; then
  export LD_LIBRARY_PATH=$root/.devbin/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  echo "using carried binaries" | tee -a "$OUT/env.txt"
  ldd "$bin/golden_cuda_test" >> "$OUT/env.txt" 2>&1
else
  # Build here: needs CMake's packages; .devdeps/ (carried) holds Debian's headers/libs.
  bdir=$root/build/device
  cmake -S . -B "$bdir" -G Ninja -DTANDEM_CUDA=ON -DTANDEM_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$root/.devdeps" > "$OUT/build.log" 2>&1 &&
    cmake --build "$bdir" -j16 --target op_harness_test golden_cuda_test sampling_cuda_test >> "$OUT/build.log" 2>&1 ||
    { echo "BUILD FAILED"; tail -30 "$OUT/build.log"; exit 1; }
  mkdir -p "$root/.devbin/bin"
  cp "$bdir/tests/ops/op_harness_test" "$bdir/tests/model/golden_cuda_test" \
     "$bdir/tests/ops/sampling_cuda_test" "$root/.devbin/bin/"
fi

status=0
# Each binary under its own limit, so a hang leaves time for the peer and the tables.
for t in op_harness golden_cuda sampling_cuda; do
  [[ -x $bin/${t}_test ]] || { echo "$t: not built" > "$OUT/$t.log"; continue; }
  timeout "${TANDEM_TEST_TIMEOUT_S:-200}" env TANDEM_OP_PERF=1 "$bin/${t}_test" > "$OUT/$t.log" 2>&1
  rc=$?
  if [[ $rc -ne 0 ]]; then status=1; echo "$t rc=$rc (124: timed out)" >> "$OUT/$t.log"; fi
done
if [[ -n "${TANDEM_SANITIZE_FILTER:-}" ]]; then  # e.g. '*MlaDecode*': racecheck on those tests
  timeout 150 compute-sanitizer --tool racecheck --racecheck-report hazard "$bin/op_harness_test" \
    --gtest_filter="$TANDEM_SANITIZE_FILTER" > "$OUT/racecheck.log" 2>&1 || echo "racecheck rc=$?" >> "$OUT/racecheck.log"
fi
PYTHONUNBUFFERED=1 timeout 300 python3 tools/device/torch_peer.py > "$OUT/torch_peer.log" 2>&1 || echo "torch peer failed" >> "$OUT/torch_peer.log"

echo "== racecheck"
[[ -f "$OUT/racecheck.log" ]] && grep -E "RACECHECK SUMMARY|hazard|PASSED|FAILED|rc=" "$OUT/racecheck.log" | head -8
echo "== failures"
grep -E "^\[  FAILED|Failure|error:|what\(\)| rc=" "$OUT/op_harness.log" "$OUT/golden_cuda.log" "$OUT/sampling_cuda.log" | head -40
echo "== gtest summary"
grep -hE "^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test" "$OUT/op_harness.log" "$OUT/golden_cuda.log" "$OUT/sampling_cuda.log"
echo "== fp8 block GEMM probe, FP8 linear paths"
grep -h "^FP8PROBE\|^FP8LINEAR" "$OUT/op_harness.log"
echo "== golden on GPU"
grep -hE "^(GOLDEN|BF16|FP8GOLDEN)" "$OUT/golden_cuda.log"
echo "== perf (ours) / peer / ceiling"
grep -h "^OPPERF" "$OUT/op_harness.log" "$OUT/golden_cuda.log" "$OUT/sampling_cuda.log"
grep -hE "^(PEER|CEILING)" "$OUT/torch_peer.log"
echo "== per-op error (max over cases)"
grep -h "^OPERR" "$OUT/op_harness.log" "$OUT/sampling_cuda.log" | awk '
  { op=$2; for (i=3;i<=NF;i++) { if ($i ~ /^max_abs=/) { v=substr($i,9)+0; if (v>ma[op]) ma[op]=v }
                                   if ($i ~ /^rel_l2=/) { v=substr($i,8)+0; if (v>rl[op]) rl[op]=v }
                                   if ($i ~ /^mismatches=/) { v=substr($i,12)+0; bw[op]+=v; isbw[op]=1 } }
    seen[op]=1 }
  END { printf "%-22s %12s %12s %10s\n", "op", "max_abs", "rel_l2", "bitwise"
        for (op in seen) printf "%-22s %12.3e %12.3e %10s\n", op, ma[op], rl[op], (isbw[op] ? bw[op] " diff" : "-") }' | sort
echo "== V3 GEMMs: tandem linear vs torch vs ceilings (tools/device/gemm_table.py)"
python3 tools/device/gemm_table.py "$OUT/op_harness.log" "$OUT/torch_peer.log" | tee "$OUT/gemm_table.txt"
exit $status
