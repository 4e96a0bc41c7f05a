#!/usr/bin/env bash
# Packs the `tandem` binary built on the dev box (build/cuda, -DTANDEM_NATIVE=OFF), the Debian
# shared libraries it needs that the GPU machine lacks, and the DeepSeek-V3 tokenizer files
# into .devbin/ for tools/device/serve_cycle.sh (device tool: carry [".devbin"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/cuda}
mkdir -p .devbin/bin .devbin/lib .devbin/tokenizer
cp "$build/app/tandem" .devbin/bin/
for lib in libfmt.so.9 libspdlog.so.1.10 libcpp-httplib.so.0.11 libpcre2-8.so.0 \
           libbrotlidec.so.1 libbrotlienc.so.1 libbrotlicommon.so.1; do
  cp -L "/usr/lib/x86_64-linux-gnu/$lib" .devbin/lib/
done
tok=${TANDEM_TOKENIZER_DIR:-../shared/data/deepseek-v3}
cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" .devbin/tokenizer/
grep -qx '/.devbin/' .git/info/exclude 2>/dev/null || echo '/.devbin/' >> .git/info/exclude
du -sh .devbin
