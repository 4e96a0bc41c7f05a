#!/usr/bin/env bash
# Quick start: install dependencies, build, write the embedded tiny model, generate from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
bash tools/build.sh
tandem=build/release/app/tandem
model=build/models/tiny
[[ -f $model/config.json ]] || $tandem make-model --preset tiny --out "$model"
$tandem generate --model-path "$model" --prompt-ids 0,3923,344,245,1665,3066 --max-tokens 32
