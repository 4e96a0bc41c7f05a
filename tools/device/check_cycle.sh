#!/usr/bin/env bash
# Correctness of every carried GPU test binary in one call (device tool, carry .devbin from
# pack_devbin.sh + pack_serve.sh), then optionally the end-to-end benchmark:
#   bash tools/device/check_cycle.sh            # tests only
#   E2E=1 MODELS=v3l4 BATCHES=1,64,256 bash tools/device/check_cycle.sh
# Each binary runs under its own timeout (TEST_TIMEOUT_S, default 150); FILTER (a gtest filter)
# narrows every binary; PERF=1 sets TANDEM_OP_PERF=1. Logs in $OUT; a summary table last.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1
export LD_LIBRARY_PATH=$PWD/.devbin/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
root=$PWD
# Test binaries carry TANDEM_SOURCE_DIR of the dev box (/work/main) for the golden data.
src_dir=${TANDEM_DEV_SOURCE_DIR:-/work/main}
if [[ "$src_dir" != "$root" && ! -e "$src_dir" ]]; then
  mkdir -p "$(dirname "$src_dir")" && ln -s "$root" "$src_dir"
fi
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv > "$OUT/env.txt" 2>&1
summary=$OUT/summary.txt
: > "$summary"
for b in .devbin/bin/*_test; do
  t=$(basename "$b")
  start=$(date +%s%N)
  timeout "${TEST_TIMEOUT_S:-150}" env ${PERF:+TANDEM_OP_PERF=1} "$b" ${FILTER:+--gtest_filter="$FILTER"} \
    > "$OUT/$t.log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  line=$(grep -hE "^\[  (PASSED|FAILED) +\] [0-9]+ test" "$OUT/$t.log" | tr '\n' ' ')
  skipped=$(grep -hcE "^\[  SKIPPED \]" "$OUT/$t.log")
  printf "%-22s rc=%-3s %7d ms %s(skipped lines %s)\n" "$t" "$rc" "$ms" "$line" "$skipped" >> "$summary"
done
if [[ -n "${E2E:-}" ]]; then
  timeout "${E2E_TIMEOUT_S:-400}" bash tools/device/e2e_bench.sh > "$OUT/e2e.txt" 2>&1
  echo "e2e rc=$?" >> "$OUT/e2e.txt"
fi
echo "== failures"
grep -hE "^\[  FAILED|Failure$|error:|what\(\)" "$OUT"/*_test.log | head -30
echo "== golden / fp8 / dummy lines"
grep -hE "^(GOLDEN|BF16|FP8GOLDEN|FP8DIAG|FP8LINEAR)" "$OUT"/*_test.log | head -60
grep -hE "^OPPERF" "$OUT"/*_test.log | head -40
[[ -f $OUT/e2e.txt ]] && tail -40 "$OUT/e2e.txt"
echo "== summary"
cat "$summary"
