#!/usr/bin/env bash
# Everything one GPU can check, in one device call (carry .devpack, made by
#   bash tools/device/pack_devbin.sh && bash tools/device/pack_serve.sh &&
#   tar cJf .devpack/devbin.tar.xz .devbin):
# MLA decode correctness and timings (mla_cycle.sh), the end-to-end benchmark (e2e_bench.sh;
# MODELS, BATCHES; E2E_FP8DEC=1 runs it a second time with the opt-in FP8 decode kernels,
# TANDEM_MOE_FP8_MMA=1 TANDEM_LINEAR_FP8_SKINNY=1), then every carried GPU test binary
# (check_cycle.sh). NO_MLA, NO_E2E, NO_TESTS skip a step. Each step has its own time limit so a
# hang in one leaves the others' results; logs in $OUT, tables last.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
[[ -d .devbin ]] || tar xJf .devpack/devbin.tar.xz
if [[ -z "${NO_MLA:-}" ]]; then
  timeout "${MLA_TIMEOUT_S:-200}" bash tools/device/mla_cycle.sh > "$OUT/mla.txt" 2>&1
  echo "mla rc=$?" >> "$OUT/mla.txt"
fi
if [[ -z "${NO_E2E:-}" ]]; then
  MODELS=${MODELS:-v3l4} BATCHES=${BATCHES:-1,64,256} timeout "${E2E_TIMEOUT_S:-200}" \
    bash tools/device/e2e_bench.sh > "$OUT/e2e.txt" 2>&1
  echo "e2e rc=$?" >> "$OUT/e2e.txt"
  if [[ -n "${E2E_FP8DEC:-}" ]]; then
    SERVE_ENV="TANDEM_MOE_FP8_MMA=1 TANDEM_LINEAR_FP8_SKINNY=1" TAG=fp8dec MODELS=${MODELS:-v3l4} \
      BATCHES=${BATCHES:-1,64,256} timeout "${E2E_TIMEOUT_S:-200}" \
      bash tools/device/e2e_bench.sh >> "$OUT/e2e.txt" 2>&1
    echo "e2e fp8dec rc=$?" >> "$OUT/e2e.txt"
  fi
fi
if [[ -z "${NO_TESTS:-}" ]]; then
  TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-120} bash tools/device/check_cycle.sh > "$OUT/check.txt" 2>&1
fi
tar czf "$OUT/logs.tgz" -C "$OUT" --exclude=logs.tgz . 2> /dev/null
echo "== e2e"; grep -vE "^\s*$" "$OUT/e2e.txt" 2> /dev/null | tail -48
echo "== tests"; sed -n '/== failures/,/== golden/p' "$OUT/check.txt" 2> /dev/null | head -20
sed -n '/== summary/,$p' "$OUT/check.txt" 2> /dev/null
echo "== mla"; grep -vE "^\s*$" "$OUT/mla.txt" 2> /dev/null | tail -45
