"""The V3 GEMM table of the GPU cycle: tandem's linear (OPGEMM lines of the op harness's
PerfGemmV3) beside torch (PEERGEMM lines of torch_peer.py, same run) and the ceilings measured in
that run (CEILING copy / bf16_matmul_8192 / fp8_matmul_8192).

Per shape and M, for each weight type: bytes = weight + bf16 x + bf16 out (each read or written
once; fp8 adds the f32 scales); flops = 2 M N K. Floor = max(bytes / copy bandwidth,
flops / matrix rate) with the bf16 or fp8 rate. Columns: times in us; "vs torch" = torch time /
tandem time (> 1: tandem faster); "floor" = floor / tandem time (1.0 = at the ceiling).
"dec us" / "floor": the FP8 mma.sync decode kernel (M <= 16, set_linear_fp8_skinny) in place of
cuBLASLt, where the log has it.
Usage: gemm_table.py op_harness.log torch_peer.log"""
import math
import re
import sys


def main():
    ours, peer, ceil = {}, {}, {}
    for line in open(sys.argv[1]):
        m = re.match(r"OPGEMM (\S+) N=(\d+) K=(\d+) M=(\d+) fp8 ([\d.]+) (\S+) bf16 ([\d.]+)"
                     r"(?: copies \d+ fp8dec (\S+))?", line)
        if m:
            dec = float(m[8]) if m[8] else float("nan")
            ours[(m[1], int(m[4]))] = (int(m[2]), int(m[3]), float(m[5]), m[6], float(m[7]), dec)
    for line in open(sys.argv[2]):
        m = re.match(r"PEERGEMM (\S+) N=\d+ K=\d+ M=(\d+) bf16 ([\d.]+) fp8 (\S+)", line)
        if m:
            peer[(m[1], int(m[2]))] = (float(m[3]), float(m[4]))
        m = re.match(r"CEILING (\S+) ([\d.]+)", line)
        if m:
            ceil[m[1]] = float(m[2])
    copy = ceil.get("copy", float("nan")) * 1e3  # bytes per us
    bf16_rate = ceil.get("bf16_matmul_8192", float("nan")) * 1e6  # flops per us
    fp8_rate = ceil.get("fp8_matmul_8192", float("nan")) * 1e6
    print(f"ceilings: copy {ceil.get('copy')} GB/s, bf16 {ceil.get('bf16_matmul_8192')} TFLOP/s, "
          f"fp8 {ceil.get('fp8_matmul_8192')} TFLOP/s")
    hdr = (f"{'shape':<15}{'N':>6}{'K':>6}{'M':>5} | {'fp8 us':>8}{'path':>8}{'torch':>8}{'vs t':>6}"
           f"{'floor':>6} | {'bf16 us':>8}{'torch':>8}{'vs t':>6}{'floor':>6} | {'dec us':>8}{'floor':>6}")
    print(hdr)
    print("-" * len(hdr))
    for (name, mm), (n, k, us8, path, us16, dec) in ours.items():
        t16, t8 = peer.get((name, mm), (float("nan"), float("nan")))
        flops = 2.0 * mm * n * k
        io = 2.0 * mm * k + 2.0 * mm * n
        floor8 = max((n * k + io + 4.0 * math.ceil(n / 128) * (k / 128) + 4.0 * mm * k / 128) / copy,
                     flops / fp8_rate)
        floor16 = max((2.0 * n * k + io) / copy, flops / bf16_rate)
        print(f"{name:<15}{n:>6}{k:>6}{mm:>5} | {us8:>8.1f}{path:>8}{t8:>8.1f}{t8 / us8:>6.2f}"
              f"{floor8 / us8:>6.2f} | {us16:>8.1f}{t16:>8.1f}{t16 / us16:>6.2f}{floor16 / us16:>6.2f}"
              f" | {dec:>8.1f}{floor8 / dec:>6.2f}")


if __name__ == "__main__":
    main()
