#!/usr/bin/env bash
# Everything one GPU can check, in one device call (carry .devpack, made by
#   bash tools/device/pack_devbin.sh && bash tools/device/pack_serve.sh &&
#   tar cJf .devpack/devbin.tar.xz .devbin):
# MLA decode correctness and timings (mla_cycle.sh), the end-to-end benchmark (e2e_bench.sh;
# MODELS, BATCHES), then every carried GPU test binary (check_cycle.sh). Each step has its own
# time limit so a hang in one leaves the others' results; logs in $OUT, tables last.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
[[ -d .devbin ]] || tar xJf .devpack/devbin.tar.xz
timeout "${MLA_TIMEOUT_S:-200}" bash tools/device/mla_cycle.sh > "$OUT/mla.txt" 2>&1
echo "mla rc=$?" >> "$OUT/mla.txt"
if [[ -z "${NO_E2E:-}" ]]; then
  MODELS=${MODELS:-v3l4} BATCHES=${BATCHES:-1,64,256} timeout "${E2E_TIMEOUT_S:-200}" \
    bash tools/device/e2e_bench.sh > "$OUT/e2e.txt" 2>&1
  echo "e2e rc=$?" >> "$OUT/e2e.txt"
fi
if [[ -z "${NO_TESTS:-}" ]]; then
  TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-120} bash tools/device/check_cycle.sh > "$OUT/check.txt" 2>&1
fi
tar czf "$OUT/logs.tgz" -C "$OUT" --exclude=logs.tgz . 2> /dev/null
echo "== e2e"; grep -vE "^\s*$" "$OUT/e2e.txt" 2> /dev/null | tail -24
echo "== tests"; sed -n '/== failures/,/== golden/p' "$OUT/check.txt" 2> /dev/null | head -20
sed -n '/== summary/,$p' "$OUT/check.txt" 2> /dev/null
echo "== mla"; grep -vE "^\s*$" "$OUT/mla.txt" | tail -45
