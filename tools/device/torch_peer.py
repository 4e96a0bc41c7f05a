"""Peer timings for the op harness's perf mode (tests/ops/op_harness_test.cpp, OPPERF lines):
the same shapes through PyTorch on the same GPU in the same run, plus the copy-bandwidth
ceiling. Prints "PEER <op> <case> <us>" lines; median of 25 event-timed runs after warm-up."""
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


if __name__ == "__main__":
    main()
