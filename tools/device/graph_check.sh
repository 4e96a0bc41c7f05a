#!/usr/bin/env bash
# CUDA graph decode on the H200 (device tool, carry .devbin from pack_devbin.sh + pack_serve.sh):
# the graph test, then `tandem generate` on a full-width V3 shape (4 layers, fp8, dummy weights)
# with and without graphs, greedy: same tokens expected, and the wall time of each.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.devbin/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=$PWD/.devbin/bin
mkdir -p /work 2> /dev/null && [[ -e /work/main ]] || ln -sfn "$PWD" /work/main 2> /dev/null
timeout 150 "$B/cuda_graph_test" > "$OUT/graph_test.log" 2>&1; echo "cuda_graph_test rc=$?"
grep -hE "^GRAPH|FAILED|Failure" "$OUT/graph_test.log" | head -20
"$B/tandem" --log-level warn make-model --preset "${PRESET:-v3}" --layers "${LAYERS:-4}" --dtype fp8 \
  --config-only --out /tmp/m > "$OUT/make.log" 2>&1 || { echo "make-model failed"; cat "$OUT/make.log"; }
python3 - > /tmp/prompts.jsonl << 'PY'
import json, random
random.seed(1)
for i in range(int(__import__("os").environ.get("NPROMPTS", "64"))):
    print(json.dumps({"prompt_ids": [random.randrange(2, 100000) for _ in range(random.randrange(20, 300))]}))
PY
command -v nsys > /dev/null && echo "nsys: $(command -v nsys)" || echo "no nsys"
export TANDEM_GRAPH_PROFILE=1
for g in 0 64; do
  s=$(date +%s.%N)
  timeout 240 "$B/tandem" generate --model-path /tmp/m --load-format dummy --device cuda \
    --prompts /tmp/prompts.jsonl --max-tokens 48 --ignore-eos --cuda-graph-max-bs $g \
    > "$OUT/gen_$g.jsonl" 2> "$OUT/gen_$g.log"
  echo "generate graphs=$g rc=$? wall $(python3 -c "print(round($(date +%s.%N) - $s, 2))") s"
  grep -E "loaded|CUDA graphs|prompts:|runner:" "$OUT/gen_$g.log" | sed 's/^/  /'
  grep -E "graph step" "$OUT/gen_$g.log" | head -6; grep -E "graph step" "$OUT/gen_$g.log" | tail -4
done
python3 - "$OUT/gen_0.jsonl" "$OUT/gen_64.jsonl" << 'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
key = lambda r: r.get("output_ids") or r.get("token_ids") or r.get("choices", [{}])[0].get("token_ids")
same = sum(1 for x, y in zip(a, b) if key(x) == key(y))
print(f"greedy outputs equal with and without graphs: {same} of {len(a)} (lines {len(a)}, {len(b)})")
for name, rows in (("eager", a), ("graphs", b)):
    d = sorted(r.get("decode_tokens_per_s", 0) for r in rows)
    print(f"{name}: per-request decode tok/s median {d[len(d)//2]:.1f}, errors {sum('error' in r for r in rows)}")
PY
