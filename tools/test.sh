#!/usr/bin/env bash
# Runs every test that needs no GPU: install dependencies, build, ctest (labels cuda and slow
# are excluded by the `release` test preset; run them with `ctest --preset cuda` on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
bash tools/build.sh
# The server suite also talks to `tandem serve` with the official OpenAI Python client when the
# package can be had; without it that one case skips.
if ! python3 -c 'import openai' 2> /dev/null; then
  timeout 120 python3 -m pip install -q --disable-pip-version-check openai > /dev/null 2>&1 ||
    echo "tools/test.sh: could not pip-install openai; the OpenAI-client server test will skip" >&2
fi
ctest --preset release -j "${TANDEM_JOBS:-2}"
