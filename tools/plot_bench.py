#!/usr/bin/env python3
"""Turns `tandem bench --output-file` results into PNG plots.

one-batch results  -> <out>_throughput.png: prefill and decode tokens/s (per GPU) vs batch size
serving results    -> <out>_latency_cdf.png: CDFs of TTFT and end-to-end latency per request

Usage: python3 tools/plot_bench.py RESULT.json [RESULT.json ...] --out PREFIX
(needs matplotlib: pip install matplotlib)
"""
import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="JSON files written by tandem bench --output-file")
    ap.add_argument("--out", default="bench", help="output file prefix (default: bench)")
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: matplotlib is missing (pip install matplotlib)", file=sys.stderr)
        return 2

    batch_runs, serving_runs = [], []
    for path in args.results:
        with open(path) as f:
            data = json.load(f)
        label = path.rsplit("/", 1)[-1].removesuffix(".json")
        if "results" in data:
            batch_runs.append((label, data))
        elif "requests" in data:
            serving_runs.append((label, data))
        else:
            print(f"error: {path} is not a tandem bench result", file=sys.stderr)
            return 2

    if batch_runs:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for label, data in batch_runs:
            rows = data["results"]
            gpus = data["config"].get("num_gpus", 1)
            bs = [r["batch_size"] for r in rows]
            ax1.plot(bs, [r["prefill_throughput"] / gpus for r in rows], "o-", label=label)
            ax2.plot(bs, [r["decode_throughput_per_gpu"] for r in rows], "o-", label=label)
        for ax, title in ((ax1, "prefill tokens/s per GPU"), (ax2, "decode tokens/s per GPU")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(f"{args.out}_throughput.png", dpi=120)
        print(f"wrote {args.out}_throughput.png")

    if serving_runs:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for label, data in serving_runs:
            ok = [r for r in data["requests"] if r["ok"]]
            for ax, key in ((ax1, "ttft_s"), (ax2, "e2e_s")):
                values = sorted(r[key] * 1e3 for r in ok)
                n = len(values)
                ax.plot(values, [(i + 1) / n for i in range(n)], label=label)
        for ax, title in ((ax1, "TTFT (ms)"), (ax2, "end-to-end latency (ms)")):
            ax.set_xlabel(title)
            ax.set_ylabel("fraction of requests")
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(f"{args.out}_latency_cdf.png", dpi=120)
        print(f"wrote {args.out}_latency_cdf.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
