#!/usr/bin/env bash
# One device call for a session's closing checks on the 2-GPU machine (kind nvidia-h200-x2,
# carry [".devbin"] from pack_devbin.sh + pack_serve.sh): every GPU test binary
# (check_cycle.sh), the PD pair over cuda_ipc (pd_cycle.sh, no transfer bench), then the
# end-to-end decode bench on one GPU (e2e_bench.sh). Each part under its own timeout, in order
# of importance; their logs are packed into $OUT/logs.tgz (the device tool returns few files)
# and the three summaries are printed last.
# Env: CHECK_S (240), PD_S (170), E2E_S (150), and the parts' own variables.
set -uo pipefail
cd "$(dirname "$0")/../.."
top=${OUT:-$PWD/out}
mkdir -p "$top"
OUT=$top/check TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-110} timeout "${CHECK_S:-240}" \
  bash tools/device/check_cycle.sh > "$top/check.txt" 2>&1
echo "check rc=$?" >> "$top/check.txt"
OUT=$top/pd PD_SKIP_BENCH=1 PD_REQUESTS=${PD_REQUESTS:-30} V2L_LAYERS=${V2L_LAYERS:-4} \
  timeout "${PD_S:-170}" bash tools/device/pd_cycle.sh > "$top/pd.txt" 2>&1
echo "pd rc=$?" >> "$top/pd.txt"
OUT=$top/e2e MODELS=${MODELS:-v3l4} BATCHES=${BATCHES:-1,64} timeout "${E2E_S:-150}" \
  bash tools/device/e2e_bench.sh > "$top/e2e.txt" 2>&1
echo "e2e rc=$?" >> "$top/e2e.txt"
tar czf "$top/logs.tgz" -C "$top" check pd e2e 2> /dev/null && rm -rf "$top/check" "$top/pd" "$top/e2e"
echo "==== e2e"; tail -n 30 "$top/e2e.txt"
echo "==== pd"; tail -n 25 "$top/pd.txt"
echo "==== check"; tail -n 60 "$top/check.txt"
