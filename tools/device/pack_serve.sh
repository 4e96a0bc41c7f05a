#!/usr/bin/env bash
# Packs the `tandem` binary built on the dev box (build/cuda, -DTANDEM_NATIVE=OFF), the Debian
# shared libraries it needs that the GPU machine lacks, and the DeepSeek-V3 tokenizer files
# into .devbin/ for tools/device/serve_cycle.sh (device tool: carry [".devbin"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/cuda}
mkdir -p .devbin/bin .devbin/lib .devbin/tokenizer
cp "$build/app/tandem" .devbin/bin/
# Every Debian library the binary links, except the C/C++ runtime (the GPU machine's is newer)
# and CUDA's own (it has the same toolkit).
ldd "$build/app/tandem" | awk '$3 ~ /^\/(usr\/)?lib\/x86_64-linux-gnu\// {print $3}' |
  grep -vE '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' |
  while read -r lib; do cp -L "$lib" .devbin/lib/; done
tok=${TANDEM_TOKENIZER_DIR:-../shared/data/deepseek-v3}
cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" .devbin/tokenizer/
grep -qx '/.devbin/' .git/info/exclude 2>/dev/null || echo '/.devbin/' >> .git/info/exclude
du -sh .devbin
