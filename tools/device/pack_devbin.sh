#!/usr/bin/env bash
# Copies the CUDA test binaries built on the dev box and the Debian shared libraries they need
# (fmt, spdlog) into .devbin/ (git-ignored through .git/info/exclude), for the device `run`
# tool's carry list. cudart is linked statically; cuBLASLt comes from the GPU machine's CUDA.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/cuda}
rm -rf .devbin && mkdir -p .devbin/bin .devbin/lib
cp "$build/tests/ops/op_harness_test" "$build/tests/model/golden_cuda_test" .devbin/bin/
[[ -x $build/tests/runtime/cuda_graph_test ]] && cp "$build/tests/runtime/cuda_graph_test" .devbin/bin/
[[ -x $build/tests/ops/sampling_cuda_test ]] && cp "$build/tests/ops/sampling_cuda_test" .devbin/bin/
[[ -x $build/tests/model/dummy_cuda_test ]] && cp "$build/tests/model/dummy_cuda_test" .devbin/bin/
# PD (tools/device/pd_cycle.sh): the GPU transport test and the transfer benchmark (a build
# configured with -DTANDEM_BUILD_BENCH=ON); PD_BUILD picks another build directory for them.
pd=${PD_BUILD:-$build}
for f in tests/disagg/disagg_cuda_test bench/transfer_bench; do
  [[ -x $pd/$f ]] || continue
  cp "$pd/$f" .devbin/bin/
  # They link UCX (tandem_disagg) besides fmt/spdlog: every Debian library but the C/C++ runtime.
  ldd "$pd/$f" | awk '$3 ~ /^\/(usr\/)?lib\/x86_64-linux-gnu\// {print $3}' |
    grep -vE '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' |
    while read -r lib; do cp -L "$lib" .devbin/lib/; done
done
# EP (tools/device/ep_cycle.sh, 2 GPUs): the dispatch and EP-model tests and the benchmark;
# EP_BUILD picks another build directory for them. libnccl.so.2 is found on the GPU machine.
ep=${EP_BUILD:-$build}
for f in tests/parallel/cuda_dispatch_test tests/parallel/ep_cuda_model_test tests/parallel/ep_bench; do
  [[ -x $ep/$f ]] && cp "$ep/$f" .devbin/bin/
done
for lib in libfmt.so.9 libspdlog.so.1.10; do cp -L "/usr/lib/x86_64-linux-gnu/$lib" .devbin/lib/; done
grep -qx '/.devbin/' .git/info/exclude 2>/dev/null || echo '/.devbin/' >> .git/info/exclude
du -sh .devbin
