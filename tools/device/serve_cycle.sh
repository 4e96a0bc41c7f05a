#!/usr/bin/env bash
# End to end on one GPU (device tool, carry .devbin): `tandem serve --device cuda` on the tiny
# model and on a full-width DeepSeek-V3 shape with 2 layers (fp8), driven by `tandem bench`.
# Needs .devbin/bin/tandem (built with -DTANDEM_CUDA=ON -DTANDEM_NATIVE=OFF), its Debian shared
# libraries in .devbin/lib and the tokenizer files in .devbin/tokenizer
# (tools/device/pack_serve.sh). Logs and JSON results go to $OUT; a table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
export LD_LIBRARY_PATH=$PWD/.devbin/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
T=$PWD/.devbin/bin/tandem
tok=$PWD/.devbin/tokenizer
summary=$OUT/summary.txt
: > "$summary"

serve_and_bench() {  # name model_dir port bench-args...
  local name=$1 model=$2 port=$3
  shift 3
  "$T" serve --model-path "$model" --device cuda --port "$port" --served-model-name "$name" \
    --max-running-requests 64 > "$OUT/serve_$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 900); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
    kill -0 $pid 2> /dev/null || break
    sleep 0.2
  done
  timeout 120 "$T" bench --base-url "http://127.0.0.1:$port" --tokenizer "$model" --mode one-batch \
    "$@" --output-file "$OUT/one_batch_$name.json" > "$OUT/bench_$name.log" 2>&1
  echo "== $name one-batch ($*)" >> "$summary"
  cat "$OUT/bench_$name.log" | grep -v "^20" >> "$summary"
  curl -s "http://127.0.0.1:$port/metrics" | grep -E "^tandem:(num_requests_running|token_usage)" >> "$summary"
  kill -TERM $pid
  wait $pid
}

{
  echo "== env"; date -u; nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
  ldd "$T" | grep -i "not found" || echo "all libraries found"
} > "$OUT/env.txt" 2>&1

# Tiny model: CUDA vs CPU greedy generation, then the server.
"$T" --log-level warn make-model --preset tiny --tokenizer "$tok" --out /tmp/tiny > "$OUT/make_tiny.log" 2>&1
for dev in cpu cuda; do
  echo "== generate tiny --device $dev" >> "$summary"
  timeout 60 "$T" --log-level warn generate --model-path /tmp/tiny --prompt-ids 0,3923,344,245 \
    --max-tokens 16 --ignore-eos --device $dev >> "$summary" 2>&1
done
serve_and_bench tiny /tmp/tiny 30001 --input-len 512 --output-len 64 --batch-size 1,8,32,64

# Full-width V3 shape, 2 layers (1 dense + 1 MoE with 256 experts), fp8 weights.
timeout 120 "$T" --log-level warn make-model --preset v3 --layers 2 --dtype fp8 --tokenizer "$tok" \
  --out /tmp/v3l2 > "$OUT/make_v3l2.log" 2>&1
echo "== make-model v3 --layers 2 --dtype fp8: $(tail -1 "$OUT/make_v3l2.log")" >> "$summary"
serve_and_bench v3l2 /tmp/v3l2 30002 --input-len 512 --output-len 32 --batch-size 1,8,32

cat "$summary"
