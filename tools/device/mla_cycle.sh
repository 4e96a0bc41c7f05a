#!/usr/bin/env bash
# MLA decode on one GPU in one call (device tool; .devbin from pack_devbin.sh): the op
# harness's MLA decode correctness cases, the perf lines (PerfMlaDecode: B=128, 4096 keys,
# H=128 and H=16, every kernel variant; DIAGS=1 adds the timing-only TANDEM_MLA_DECODE_DIAG
# runs), the copy ceiling measured by torch in the same call, and with NCU=1 Nsight Compute
# sections per NCU_RUNS entry (below). Logs in $OUT; the lines to read last.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.devbin/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
bin=.devbin/bin/op_harness_test
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/env.txt" 2>&1
timeout 200 "$bin" --gtest_filter='*MlaDecode*:-*Perf*' > "$OUT/mla_check.log" 2>&1
echo "check rc=$?" >> "$OUT/mla_check.log"
timeout 200 env TANDEM_OP_PERF=1 ${DIAGS:+TANDEM_MLA_DECODE_DIAGS=1} "$bin" --gtest_filter='*PerfMlaDecode*' > "$OUT/mla_perf.log" 2>&1
echo "perf rc=$?" >> "$OUT/mla_perf.log"
python3 - > "$OUT/copy.txt" 2>&1 <<'PY'
import torch
x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
ts = []
for _ in range(10):
    a.record(); y.copy_(x); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
ts.sort(); ms = ts[len(ts) // 2]
print(f"COPY 1GiB d2d {ms*1e3:.0f} us {2 * x.numel() / ms / 1e6:.0f} GB/s (read + write)")
PY
# NCU=1: one profile per "label:ENV=VALUE" entry of NCU_RUNS (the first wgmma launch of the perf
# test, H=128, under that environment).
if [[ -n "${NCU:-}" ]] && command -v ncu > /dev/null; then
  for run in ${NCU_RUNS:-tma:TANDEM_MLA_DECODE_TMA=1 cpasync:TANDEM_MLA_DECODE_TMA=0}; do
    label=${run%%:*}
    timeout 240 env TANDEM_OP_PERF=1 "${run#*:}" ncu --clock-control none -k "regex:mla_decode_wgmma" -c 1 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
      --section SchedulerStats --section Occupancy --section LaunchStats \
      "$bin" --gtest_filter='*PerfMlaDecode*' > "$OUT/ncu_$label.txt" 2>&1
    echo "ncu rc=$?" >> "$OUT/ncu_$label.txt"
  done
fi
echo "== check"; grep -E "^\[  (PASSED|FAILED)|Failure|rc=" "$OUT/mla_check.log" | head -20
echo "== ncu"; for f in "$OUT"/ncu_*.txt; do [[ -e $f ]] || continue; echo "-- $f"
  grep -E "Duration|Memory Throughput|DRAM Throughput|L1/TEX Hit|L2 Hit|Compute \(SM\)|Registers Per|Achieved Occupancy|Stall|Warp Cycles Per Issued|rc=" "$f" | head -30; done
echo "== perf"; cat "$OUT/copy.txt"; grep -E "OPPERF|rc=" "$OUT/mla_perf.log"
