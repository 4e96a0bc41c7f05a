#!/usr/bin/env bash
# MLA prefill attention on the GPU machine in one command: the op harness's prefill cases
# (tensor-core kernel against the CPU op), its perf case (TANDEM_OP_PERF=1, OPPREFILL lines),
# the torch SDPA peer on the same shapes (tools/device/torch_sdpa_peer.py), then a table:
# shape, ours us, torch us (best backend), ratio torch/ours, our TFLOP/s and % of 790 TFLOP/s.
# Logs go to $OUT (or ./out when unset).
#
# Binaries built on the dev box and carried (docs/cuda.md):
#   cmake --build build/<dir> -j2 --target op_harness_test golden_cuda_test
#   tools/device/pack_devbin.sh build/<dir>
# then `run` with carry [".devbin"] and command `bash tools/device/prefill_bench.sh`
# (DEVBIN=<folder> names another carried folder of the same layout).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
root=$PWD
devbin=$root/${DEVBIN:-.devbin}
bin=$devbin/bin
export LD_LIBRARY_PATH=$devbin/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
[[ -x $bin/op_harness_test ]] || { echo "no $bin/op_harness_test: pack it first (pack_devbin.sh)"; exit 1; }

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "(no git)"
} > "$OUT/prefill_env.txt" 2>&1

status=0
timeout "${TANDEM_TEST_TIMEOUT_S:-240}" env TANDEM_OP_PERF=1 "$bin/op_harness_test" \
  --gtest_filter='*MlaPrefill*:*PerfPrefill*' > "$OUT/prefill_harness.log" 2>&1 || {
  status=1; echo "op_harness rc=$? (124: timed out)" >> "$OUT/prefill_harness.log"; }
PYTHONUNBUFFERED=1 timeout 300 python3 tools/device/torch_sdpa_peer.py > "$OUT/prefill_sdpa.log" 2>&1 ||
  { status=1; echo "torch sdpa peer failed rc=$?" >> "$OUT/prefill_sdpa.log"; }

cat "$OUT/prefill_env.txt"
echo "== harness (accuracy)"
grep -hE "^OPERR mla_prefill|^\[  (FAILED|PASSED|SKIPPED|     OK) |Failure| rc=" "$OUT/prefill_harness.log" | head -40
echo "== torch SDPA backends"
grep -hE "^(torch|SDPA )" "$OUT/prefill_sdpa.log"
grep -h "failed" "$OUT/prefill_sdpa.log"
echo "== prefill attention, bf16, causal (flops: causal half, 2*L*L/2*H*(192+128) per sequence)"
awk '
  FNR == NR && /^OPPREFILL/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    base = f["shape"] " H=" f["H"]; key = base " " f["kernel"]; shape_of[key] = base
    ours[key] = f["us"]; tf[key] = f["tflops"]; pct[key] = f["pct790"]
    order[++n] = key; next }
  FNR != NR && /^SDPABEST/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); g[kv[1]] = kv[2] }
    key = g["shape"] " H=" g["H"]; torch_us[key] = g["us"]; torch_be[key] = g["backend"] }
  END {
    printf "%-22s %10s %10s %-16s %12s %9s %7s\n", "shape kernel", "ours_us", "torch_us", "torch_backend",
           "torch/ours", "TFLOP/s", "%790"
    for (i = 1; i <= n; i++) {
      k = order[i]; s = shape_of[k]; t = (s in torch_us) ? torch_us[s] : "-"
      r = (s in torch_us && ours[k] > 0) ? sprintf("%.2f", torch_us[s] / ours[k]) : "-"
      printf "%-22s %10s %10s %-16s %12s %9s %7s\n", k, ours[k], t, (s in torch_be) ? torch_be[s] : "-",
             r, tf[k], pct[k]
    }
  }' "$OUT/prefill_harness.log" "$OUT/prefill_sdpa.log"
exit $status
