#!/usr/bin/env bash
# End-to-end decode benchmark on one H200 (device tool, carry .devbin from pack_serve.sh):
# `tandem serve --device cuda --load-format dummy` on a V2-Lite-shaped model (bf16) and on a
# full-width DeepSeek-V3 shape with 4 layers (fp8), `tandem bench --mode one-batch` with input
# 2000 / output 100 at each batch size, then the server's per-batch runner lines (wall and GPU
# time of each decode step). Prints one table per model: decode tok/s, step time, GPU time of
# the step's kernels and the share of the step spent outside them (host work, launch gaps).
# Env: MODELS ("v2lite v3l4"), BATCHES (1,8,32,64,128,256), GRAPH_BS (256; 0 = eager),
# SERVE_ENV (VAR=VALUE words for the server, e.g. "TANDEM_MOE_FP8_MMA=1"; its tag goes in every
# file name and table title as TAG, default "env" when SERVE_ENV is set).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.devbin/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
T=$PWD/.devbin/bin/tandem
tok=$PWD/.devbin/tokenizer
BATCHES=${BATCHES:-1,8,32,64,128,256}
GRAPH_BS=${GRAPH_BS:-256}
port=30100
for name in ${MODELS:-v2lite v3l4}; do
  case $name in
    v2lite) args=(--preset v2-lite) ;;
    v3l4) args=(--preset v3 --layers 4 --dtype fp8) ;;
  esac
  "$T" --log-level warn make-model "${args[@]}" --config-only --tokenizer "$tok" --out "/tmp/$name" \
    > "$OUT/make_$name.log" 2>&1 || { echo "make-model $name failed"; continue; }
  tag=${name}_g$GRAPH_BS
  [[ -n "${SERVE_ENV:-}" ]] && tag=${tag}_${TAG:-env}
  # shellcheck disable=SC2086  # SERVE_ENV is a list of words
  env ${SERVE_ENV:-} "$T" serve --model-path "/tmp/$name" --load-format dummy --device cuda --port $port \
    --max-running-requests 256 --max-total-tokens 600000 --cuda-graph-max-bs "$GRAPH_BS" \
    > "$OUT/serve_$tag.log" 2>&1 &
  pid=$!
  for _ in $(seq 1500); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
    kill -0 $pid 2> /dev/null || break
    sleep 0.2
  done
  timeout 420 "$T" bench --base-url "http://127.0.0.1:$port" --tokenizer "/tmp/$name" \
    --mode one-batch --input-len 2000 --output-len 100 --batch-size "$BATCHES" \
    --output-file "$OUT/one_batch_$tag.json" > "$OUT/bench_$tag.log" 2>&1
  echo "bench $tag rc=$?"
  kill -TERM $pid
  wait $pid
  python3 - "$OUT/one_batch_$tag.json" "$OUT/serve_$tag.log" "$tag" << 'PY'
import json, re, sys
res = json.load(open(sys.argv[1]))["results"]
print(f"== {sys.argv[3]}: tandem bench one-batch, input 2000, output 100")
print(f"{'batch':>6} {'prefill tok/s':>14} {'decode tok/s':>13} {'TTFT ms':>9} {'latency s':>10}")
for r in res:
    print(f"{r['batch_size']:>6} {r['prefill_throughput']:>14.0f} {r['decode_throughput']:>13.1f} {r['ttft_ms']:>9.0f} {r['latency_s']:>10.2f}")
print("server decode steps by batch size (>= 20 steps): runner wall, GPU time of the forward,"
      " engine host work before the step, share of the whole step outside the GPU")
print(f"{'batch':>6} {'steps':>6} {'path':>18} {'step ms':>8} {'GPU ms':>8} {'host ms':>8} {'outside':>8} {'tok/s':>8}")
for line in open(sys.argv[2]):
    m = re.search(r"runner: (eager decode|CUDA-graph decode) batch (\d+): (\d+) steps, wall ([\d.]+) ms/step, "
                  r"GPU ([\d.]+) ms/step, host before the step ([\d.]+) ms/step", line)
    if not m or int(m.group(3)) < 20:
        continue
    b, n, wall, gpu, gap = int(m.group(2)), int(m.group(3)), float(m.group(4)), float(m.group(5)), float(m.group(6))
    step = wall + gap
    print(f"{b:>6} {n:>6} {m.group(1):>18} {step:>8.2f} {gpu:>8.2f} {gap:>8.2f} {1 - gpu / step:>7.1%} {b / step * 1e3:>8.0f}")
PY
  port=$((port + 1))
done
