"""Peer timings for the op harness's perf mode (tests/ops/op_harness_test.cpp, OPPERF and
OPGEMM lines): the same shapes through PyTorch on the same GPU in the same run, plus the
ceilings (copy bandwidth, bf16 and fp8 matrix rates). Prints "PEER <op> <case> <us>",
"PEERGEMM ..." and "CEILING ..." lines; median of 25 event-timed runs after warm-up.
`--gemm` runs only the ceilings and the V3 GEMM sweep."""
import sys

import torch


def median_us(fn, reps=25):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False  # f32 peer GEMM in true f32, as ours
    # Ceiling: a large device-to-device copy (bytes read + written).
    src = torch.randn(1 << 30, device=dev, dtype=torch.float32)  # 4 GiB
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src))
    print(f"CEILING copy {2 * src.numel() * 4 / us / 1e3:.0f} GB/s")
    del src, dst

    a = torch.randn(8192, 8192, device=dev).bfloat16()
    b = torch.randn(8192, 8192, device=dev).bfloat16()
    us = median_us(lambda: a @ b, reps=10)
    print(f"CEILING bf16_matmul_8192 {2 * 8192 ** 3 / us / 1e6:.0f} TFLOP/s")
    del a, b

    xb = torch.randn(4096, 2048, device=dev).bfloat16()
    wb = (torch.randn(7168, 2048, device=dev) * 0.01).bfloat16()
    us = median_us(lambda: torch.nn.functional.linear(xb, wb))
    print(f"PEER linear M=4096,N=7168,K=2048,bf16x,bf16w,bf16out {us:.1f}")

    x = torch.randn(4096, 7168, device=dev)
    w = torch.randn(7168, device=dev).bfloat16()
    wf = w.float()
    us = median_us(lambda: torch.nn.functional.rms_norm(x, (7168,), wf, 1e-6))
    print(f"PEER rms_norm f32[4096,7168] {us:.1f}")

    wl = (torch.randn(18432, 7168, device=dev) * 0.01).bfloat16()
    xl = torch.randn(1, 7168, device=dev)
    us = median_us(lambda: torch.nn.functional.linear(xl.bfloat16(), wl))
    print(f"PEER linear M=1,N=18432,K=7168,bf16w {us:.1f}")

    wm = (torch.randn(7168, 2048, device=dev) * 0.01).bfloat16()
    xm = torch.randn(512, 2048, device=dev)
    us = median_us(lambda: torch.nn.functional.linear(xm, wm.float()))
    print(f"PEER linear M=512,N=7168,K=2048,f32(dequantized) {us:.1f}")

    mla_decode_peer(dev)
    fp8_block_peer(dev)
    fp8_ceiling(dev)
    gemm_sweep(dev)


def copy_ceiling(dev):
    src = torch.randn(1 << 30, device=dev, dtype=torch.float32)  # 4 GiB
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src))
    print(f"CEILING copy {2 * src.numel() * 4 / us / 1e3:.0f} GB/s")


def bf16_ceiling(dev):
    a = torch.randn(8192, 8192, device=dev).bfloat16()
    b = torch.randn(8192, 8192, device=dev).bfloat16()
    us = median_us(lambda: a @ b, reps=10)
    print(f"CEILING bf16_matmul_8192 {2 * 8192 ** 3 / us / 1e6:.0f} TFLOP/s")


def fp8_ceiling(dev):
    """The FP8 matrix rate: _scaled_mm 8192^3 with one scale per tensor (no block scales)."""
    a = torch.randn(8192, 8192, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(8192, 8192, device=dev).to(torch.float8_e4m3fn)
    one = torch.ones((), device=dev)
    us = median_us(lambda: torch._scaled_mm(a, b.t(), one, one, out_dtype=torch.bfloat16), reps=10)
    print(f"CEILING fp8_matmul_8192 {2 * 8192 ** 3 / us / 1e6:.0f} TFLOP/s")


# Full-width DeepSeek-V3 projections: name, N (out), K (in); the op harness's PerfGemmV3.
V3_GEMMS = [("q_a", 1536, 7168), ("q_b", 24576, 1536), ("kv_a", 576, 7168), ("kv_b", 32768, 512),
            ("o", 7168, 16384), ("dense_gate_up", 18432, 7168), ("dense_down", 7168, 18432),
            ("expert_gate_up", 2048, 7168), ("expert_down", 7168, 2048)]


def gemm_sweep(dev):
    """torch's bf16 F.linear and blockwise FP8 _scaled_mm (1x128 x scales [K/128][M], 128x128
    weight scales, bf16 out; the GEMM alone, x already quantized, which flatters torch) on the
    V3 shapes at M = 1, 64, 128, 4096. Weights rotate over copies totalling >= 256 MiB, as in
    the op harness. Prints "PEERGEMM <name> N=.. K=.. M=.. bf16 <us> fp8 <us|nan>"."""
    import torch.nn.functional as F
    for name, n, k in V3_GEMMS:
        copies = min(16, max(1, (256 << 20) // (n * k)))
        w16 = [(torch.randn(n, k, device=dev) * 0.02).bfloat16() for _ in range(copies)]
        w8 = [w.float().mul(448 / 0.1).clamp(-448, 448).to(torch.float8_e4m3fn) for w in w16]
        sw = torch.full((n // 128 if n % 128 == 0 else n // 128 + 1, k // 128), 1 / 448, device=dev)
        x = torch.randn(4096, k, device=dev).bfloat16()
        x8 = x.float().clamp(-448, 448).to(torch.float8_e4m3fn)
        for m in (1, 64, 128, 4096):
            xm, x8m = x[:m], x8[:m]
            it = [0]

            def bf16():
                it[0] += 1
                return F.linear(xm, w16[it[0] % copies])
            us16 = median_us(bf16)
            sa = torch.rand(k // 128, m, device=dev).t()
            us8 = float("nan")
            try:
                def fp8():
                    it[0] += 1
                    return torch._scaled_mm(x8m, w8[it[0] % copies].t(), sa, sw.t(), out_dtype=torch.bfloat16)
                us8 = median_us(fp8)
            except Exception as e:  # noqa: BLE001 - e.g. a size torch's checks refuse
                print(f"PEERGEMM {name} M={m} fp8 failed: {type(e).__name__}: {str(e)[:120]}")
            print(f"PEERGEMM {name} N={n} K={k} M={m} bf16 {us16:.2f} fp8 {us8:.2f}", flush=True)
        del w16, w8, x, x8
        torch.cuda.empty_cache()


def main_gemm():
    dev = "cuda"
    copy_ceiling(dev)
    bf16_ceiling(dev)
    fp8_ceiling(dev)
    gemm_sweep(dev)


def mla_decode_peer(dev):
    """Absorbed MLA decode, B=128, 4096 keys, bf16: the same math as the op over the latent
    already gathered per sequence ([B, L, 576] contiguous, so torch skips the paged gather; the
    gather is timed separately). Two forms: bmm + f32 softmax + bmm, and SDPA with the heads as
    the query length (k = latent, v = its first 512 dims)."""
    import torch.nn.functional as F
    b, L, lora, rope = 128, 4096, 512, 64
    cache = torch.randn(b * L, lora + rope, device=dev).bfloat16()
    slots = torch.randperm(b * L, device=dev).view(b, L)
    lat = cache[slots]
    us = median_us(lambda: cache[slots])
    print(f"PEER mla_gather B=128,len=4096 {us:.1f}")
    for h in (128, 16):
        q = (torch.randn(b, h, lora + rope, device=dev) * 0.1).bfloat16()
        scale = 0.07

        def bmm_form():
            s = torch.bmm(q, lat.transpose(1, 2)).float() * scale
            p = torch.softmax(s, dim=-1).bfloat16()
            return torch.bmm(p, lat[:, :, :lora])

        best = median_us(bmm_form)
        print(f"PEER mla_decode_bmm B=128,H={h},len=4096 {best:.1f}")
        try:
            qs, ks, vs = q.unsqueeze(1), lat.unsqueeze(1), lat[:, :, :lora].unsqueeze(1)
            us = median_us(lambda: F.scaled_dot_product_attention(qs, ks, vs, scale=scale))
            print(f"PEER mla_decode_sdpa B=128,H={h},len=4096 {us:.1f}")
            best = min(best, us)
        except Exception as e:  # noqa: BLE001 - a backend may refuse dim 576
            print(f"PEER mla_decode_sdpa B=128,H={h} failed: {type(e).__name__}: {str(e)[:120]}")
        print(f"PEER mla_decode B=128,H={h},len=4096,best {best:.1f}")


def fp8_block_peer(dev):
    """torch._scaled_mm with DeepSeek-style scales (1x128 on x, 128x128 on W), M=4096, N=7168,
    K=2048, bf16 out, if this torch supports it; the peer of the op harness's fp8_block_gemm.
    Tries the scale strides torch may require and says which ran."""
    m, n, k = 4096, 7168, 2048
    x = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
    w = (torch.randn(n, k, device=dev) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    variants = {
        "sa (M,K/128) M-major, sb (K/128,N/128) K-major": (
            torch.rand(k // 128, m, device=dev).t(), torch.rand(n // 128, k // 128, device=dev).t()),
        "sa (M,K/128) K-major, sb (K/128,N/128) K-major": (
            torch.rand(m, k // 128, device=dev), torch.rand(n // 128, k // 128, device=dev).t()),
        "sa (M,K/128) M-major, sb (K/128,N/128) N-major": (
            torch.rand(k // 128, m, device=dev).t(), torch.rand(k // 128, n // 128, device=dev)),
    }
    for name, (sa, sb) in variants.items():
        try:
            fn = lambda: torch._scaled_mm(x, w.t(), sa, sb, out_dtype=torch.bfloat16)  # noqa: E731
            us = median_us(fn)
            print(f"PEER fp8_block_gemm M=4096,N=7168,K=2048 ({name}) {us:.1f} us "
                  f"{2 * m * n * k / us / 1e6:.0f} TFLOP/s")
            return
        except Exception as e:  # noqa: BLE001 - report and try the next layout
            print(f"PEER fp8_block_gemm ({name}) failed: {type(e).__name__}: {str(e)[:160]}")


if __name__ == "__main__":
    if "--gemm" in sys.argv:
        main_gemm()
    else:
        main()
