"""Torch peer for MLA prefill attention (tests/ops/op_harness_test.cpp, PerfPrefillAttention):
the same shapes through torch.nn.functional.scaled_dot_product_attention on the same GPU in the
same run. bf16, is_causal, q/k head dim 192 (nope 128 + rope 64, k_pe broadcast over heads as
MLA's expanded keys), v head dim 128; one sequence of 4096 and 4 x 1024 (a batch of 4 equal
sequences), H = 128 and 16.

Each SDPA backend (flash, cuDNN, memory-efficient, math) is tried alone through
torch.nn.attention.sdpa_kernel, first with v of dim 128; where a backend refuses unequal q/k and
v dims, again with v zero-padded to 192 (the output sliced back to 128; the padding's flops are
not counted, its time is). The math backend runs only for the small shapes (it materializes
T x T scores per head). Prints one line per backend and shape,
  "SDPA shape=<B>x<L> H=<h> backend=<name> vdim=<128|192pad> us=<median> tflops=<x>"
or "SDPA shape=... backend=<name> unsupported <reason>", and per shape the best one:
  "SDPABEST shape=<B>x<L> H=<h> backend=<name> us=<median> tflops=<x> pct790=<y>"
Flops: the causal half, B * 2 * L * L / 2 * H * (192 + 128). Median of 25 event-timed runs."""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from torch_peer import median_us  # the same timing as the other peers (script directory)

SHAPES = [(1, 4096, 128), (4, 1024, 128), (1, 4096, 16), (4, 1024, 16)]
BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)]
CEILING_TFLOPS = 790.0


def main():
    dev = "cuda"
    torch.manual_seed(0)
    print(f"torch {torch.__version__} cuda {torch.version.cuda} cudnn {torch.backends.cudnn.version()} "
          f"{torch.cuda.get_device_name()}")
    for seqs, length, heads in SHAPES:
        shape = f"{seqs}x{length}"
        # [B, H, L, D] as SDPA wants; k = [k_nope_h | k_pe] with k_pe shared by the heads.
        q = torch.randn(seqs, heads, length, 192, device=dev, dtype=torch.bfloat16)
        k_nope = torch.randn(seqs, heads, length, 128, device=dev, dtype=torch.bfloat16)
        k_pe = torch.randn(seqs, 1, length, 64, device=dev, dtype=torch.bfloat16)
        k = torch.cat([k_nope, k_pe.expand(seqs, heads, length, 64)], dim=-1).contiguous()
        v = torch.randn(seqs, heads, length, 128, device=dev, dtype=torch.bfloat16)
        v_pad = F.pad(v, (0, 64)).contiguous()
        flops = seqs * 2.0 * length * length / 2.0 * heads * (192 + 128)
        best = None
        for name, backend in BACKENDS:
            if name == "math" and seqs * heads * length * length > (1 << 31):
                print(f"SDPA shape={shape} H={heads} backend={name} skipped (T x T scores too large)")
                continue
            done = False
            for vdim, vv in (("128", v), ("192pad", v_pad)):
                try:
                    with sdpa_kernel([backend]):
                        fn = lambda: F.scaled_dot_product_attention(q, k, vv, is_causal=True, scale=0.0722)
                        out = fn()
                        torch.cuda.synchronize()
                        us = median_us(fn)
                except Exception as e:  # a backend that refuses these dims or this build
                    reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
                    print(f"SDPA shape={shape} H={heads} backend={name} vdim={vdim} unsupported {reason}")
                    continue
                tflops = flops / us / 1e6
                print(f"SDPA shape={shape} H={heads} backend={name} vdim={vdim} us={us:.1f} "
                      f"tflops={tflops:.1f}")
                if best is None or us < best[1]:
                    best = (f"{name}/{vdim}", us)
                del out
                done = True
                break
            if not done:
                print(f"SDPA shape={shape} H={heads} backend={name} unsupported for both v dims")
        if best:
            tflops = flops / best[1] / 1e6
            print(f"SDPABEST shape={shape} H={heads} backend={best[0]} us={best[1]:.1f} "
                  f"tflops={tflops:.1f} pct790={100.0 * tflops / CEILING_TFLOPS:.1f}")
        else:
            print(f"SDPABEST shape={shape} H={heads} none")
        del q, k, v, v_pad, k_nope, k_pe
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
