#!/usr/bin/env bash
# Runs every test that needs no GPU: install dependencies, build, ctest (labels cuda and slow
# are excluded by the `release` test preset; run them with `ctest --preset cuda` on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
bash tools/build.sh
ctest --preset release -j "${TANDEM_JOBS:-2}"
