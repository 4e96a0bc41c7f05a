#!/usr/bin/env bash
# Configures and builds tandem with the `release` preset (CUDA backend when nvcc is found).
# Two jobs by default: CI machines have two cores; override with TANDEM_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${CUDACXX:-}" && ! -x "$(command -v nvcc)" && -x /usr/local/cuda/bin/nvcc ]]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
cmake --preset release >/dev/null
cmake --build --preset release -j "${TANDEM_JOBS:-2}"
