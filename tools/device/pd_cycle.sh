#!/usr/bin/env bash
# PD disaggregation on the 2-GPU machine (device tool, kind nvidia-h200-x2, carry [".devbin"];
# docs/disagg.md "GPU runs"): disagg_cuda_test, the KV transfer benchmark (bench/
# transfer_bench.cpp), then for the tiny model and a V2-Lite-shaped dummy model: prefill on
# GPU 0, decode on GPU 1 (--transfer-backend cuda_ipc), `tandem router` in front, and a
# colocated server on GPU 0; ~50 greedy requests of mixed lengths go to the router and to the
# colocated server, and each is reported equal or not. Every step runs under `timeout`; logs go
# to $OUT; the summary table is printed last even when a step fails.
# Needs in .devbin/: bin/tandem (tools/device/pack_serve.sh), bin/disagg_cuda_test and
# bin/transfer_bench (tools/device/pack_devbin.sh from a build with -DTANDEM_BUILD_BENCH=ON),
# lib/, tokenizer/. Optional: PD_REQUESTS (50), V2L_LAYERS (8), PD_SKIP_BENCH=1; for a dry run
# of the script on a CPU box: PD_BIN (a dir with tandem), PD_TOKENIZER, PD_DEVICES ("cuda:0
# cuda:1": prefill, decode; colocated uses the first), PD_BACKEND (cuda_ipc).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
export LD_LIBRARY_PATH=$PWD/.devbin/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=${PD_BIN:-$PWD/.devbin/bin}
T=$B/tandem
tok=${PD_TOKENIZER:-$PWD/.devbin/tokenizer}
read -r dev_p dev_d <<< "${PD_DEVICES:-cuda:0 cuda:1}"
backend=${PD_BACKEND:-cuda_ipc}
N=${PD_REQUESTS:-50}
summary=$OUT/pd_summary.txt
: > "$summary"
row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" >> "$summary"; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2> /dev/null; done; sleep 3
            for p in "${pids[@]}"; do kill -KILL "$p" 2> /dev/null; done; pids=(); }
trap cleanup EXIT

{
  echo "== env"; date -u; nvidia-smi --query-gpu=index,name,driver_version,memory.used --format=csv
  nvidia-smi topo -m
  for f in tandem disagg_cuda_test transfer_bench; do
    [[ -x $B/$f ]] && { echo "$f:"; ldd "$B/$f" | grep -i "not found" || echo "  libraries found"; } \
      || echo "$f: MISSING"
  done
} > "$OUT/env.txt" 2>&1

# 1. GPU transport tests.
if [[ -x $B/disagg_cuda_test ]]; then
  timeout 300 "$B/disagg_cuda_test" > "$OUT/disagg_cuda_test.log" 2>&1
  rc=$?
  row disagg_cuda_test "rc=$rc" "$(grep -E '^\[  (PASSED|FAILED|SKIPPED)' "$OUT/disagg_cuda_test.log" | tr '\n' ' ')"
else
  row disagg_cuda_test missing "-"
fi

# 2. Transfer benchmark (its markdown table goes to transfer_bench.md).
if [[ ${PD_SKIP_BENCH:-0} != 1 && -x $B/transfer_bench ]]; then
  timeout 400 "$B/transfer_bench" --src 0 --dst 1 > "$OUT/transfer_bench.md" 2> "$OUT/transfer_bench.log"
  rc=$?
  row transfer_bench "rc=$rc" "$(grep -E 'owner check' "$OUT/transfer_bench.md" || tail -1 "$OUT/transfer_bench.log")"
else
  row transfer_bench skipped "-"
fi

wait_health() {  # port pid seconds
  local port=$1 pid=$2
  for _ in $(seq $(( $3 * 5 ))); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && return 0
    kill -0 "$pid" 2> /dev/null || return 1
    sleep 0.2
  done
  return 1
}

# 3. PD pair vs colocated, per model. Ports: base+0 prefill, +1 decode, +2 colocated, +3 router,
# +4 bootstrap.
pd_model() {  # name model_dir base_port extra-serve-args...
  local name=$1 model=$2 base=$3
  shift 3
  local common=(--model-path "$model" --tokenizer-path "$tok" --served-model-name "$name"
                --max-running-requests 32 --chunked-prefill-size 512 "$@")
  local pd=(--pd-token pd-cycle --transfer-backend "$backend" --bootstrap-timeout-ms 20000
            --transfer-timeout-ms 30000)
  "$T" serve "${common[@]}" "${pd[@]}" --device "$dev_p" --role prefill --port $base \
    --disaggregation-bootstrap-port $((base + 4)) > "$OUT/${name}_prefill.log" 2>&1 &
  local p=$!; pids+=($p)
  "$T" serve "${common[@]}" "${pd[@]}" --device "$dev_d" --role decode --port $((base + 1)) \
    > "$OUT/${name}_decode.log" 2>&1 &
  local d=$!; pids+=($d)
  "$T" serve "${common[@]}" --device "$dev_p" --port $((base + 2)) > "$OUT/${name}_colocated.log" 2>&1 &
  local c=$!; pids+=($c)
  local ok=1
  for pp in "$base:$p" "$((base + 1)):$d" "$((base + 2)):$c"; do
    wait_health "${pp%%:*}" "${pp##*:}" 300 || { ok=0; echo "server on port ${pp%%:*} not healthy" >> "$OUT/${name}_compare.log"; }
  done
  if [[ $ok == 1 ]]; then
    timeout 60 "$T" router --prefill "http://127.0.0.1:$base" --decode "http://127.0.0.1:$((base + 1))" \
      --port $((base + 3)) --request-timeout-s 120 > "$OUT/${name}_router.log" 2>&1 &
    local r=$!; pids+=($r)
    wait_health $((base + 3)) $r 30 && sleep 2 || ok=0  # router: first upstream health poll
  fi
  if [[ $ok == 1 ]]; then
    timeout 400 python3 - "$base" "$N" "$name" > "$OUT/${name}_compare.log" 2>&1 <<'EOF'
import json, random, sys, time, urllib.request
base, n, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {"error": e.read().decode(errors="replace")}
    except Exception as e:  # connection refused, timeout
        return -1, {"error": str(e)}
rng = random.Random(7)
lengths = [1, 2, 63, 64, 65, 511, 512, 513, 1000, 2048]
equal = 0
rows = []
t0 = time.time()
for i in range(n):
    plen = lengths[i] if i < len(lengths) else rng.choice([rng.randint(1, 128), rng.randint(128, 1024), rng.randint(1024, 2100)])
    prompt = [rng.randint(100, 20000) for _ in range(plen)]
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": rng.randint(1, 32),
            "temperature": 0, "ignore_eos": True}}
    # Sequential: the colocated and the PD decode batch are both this one request, so the GPU
    # arithmetic is the same and greedy output must agree exactly.
    sc, jc = post(base + 2, body)
    sr, jr = post(base + 3, body)
    a, b = jc.get("output_ids"), jr.get("output_ids")
    same = sc == 200 and sr == 200 and a == b
    first = next((k for k, (x, y) in enumerate(zip(a or [], b or [])) if x != y), None)
    equal += same
    rows.append(f"| {i} | {plen} | {body['sampling_params']['max_new_tokens']} | {sc}/{sr} | "
                f"{'equal' if same else 'DIFFERENT'} | {'' if same else (first if first is not None else str(jr.get('error', ''))[:120])} |")
print(f"## {name}: PD (router -> prefill + decode) vs colocated, {n} greedy /generate requests in {time.time() - t0:.1f} s")
print("| # | prompt | max_new | status colo/pd | result | first differing index or error |")
print("| ---: | ---: | ---: | --- | --- | --- |")
print("\n".join(rows))
print(f"RESULT {name}: {equal}/{n} equal")
sys.exit(0 if equal == n else 1)
EOF
    row "pd $name" "rc=$?" "$(grep RESULT "$OUT/${name}_compare.log" || tail -1 "$OUT/${name}_compare.log")"
    for port in $base $((base + 1)); do
      curl -s "http://127.0.0.1:$port/metrics" | grep -E "^tandem:(kv_pages_used|pd_rooms_in_flight)" \
        | sed "s/^/port $port: /" >> "$OUT/${name}_compare.log"
    done
  else
    row "pd $name" "servers failed to start" "see $OUT/${name}_*.log"
  fi
  cleanup
}

if [[ -x $T ]]; then
  timeout 60 "$T" --log-level warn make-model --preset tiny --tokenizer "$tok" --out /tmp/pd_tiny \
    > "$OUT/make_tiny.log" 2>&1
  pd_model tiny /tmp/pd_tiny 31000
  timeout 60 "$T" --log-level warn make-model --preset v2-lite --layers "${V2L_LAYERS:-8}" --config-only \
    --tokenizer "$tok" --out /tmp/pd_v2l > "$OUT/make_v2l.log" 2>&1
  pd_model v2lite /tmp/pd_v2l 31100 --load-format dummy
else
  row "pd tiny / v2lite" "tandem missing" "-"
fi

{
  echo
  echo "## PD cycle summary ($(date -u +%FT%TZ))"
  echo "| step | status | result |"
  echo "| --- | --- | --- |"
  cat "$summary"
  [[ -f $OUT/transfer_bench.md ]] && cat "$OUT/transfer_bench.md"
} > "$OUT/pd_table.md"
cat "$OUT/pd_table.md"
