#!/usr/bin/env python3
"""Peer for bench/tokenizer_bench.cpp: Hugging Face `tokenizers` encoding the same documents
(the golden strings of tests/data/tokenizer/encode_cases.jsonl joined into >= 16 KiB
documents, exactly as the C++ benchmark builds them), one thread, then all threads through
encode_batch. With --cpp-bench it also runs the C++ benchmark and prints both and the ratio.

  python3 bench/tokenizer_peer.py --cpp-bench build/tok-bench/bench/tokenizer_bench
"""
import argparse
import json
import os
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CATEGORIES = {"english", "chinese", "code", "numbers", "emoji", "mixed", "whitespace"}
DOC_BYTES = 16384


def documents():
    docs, doc = [], b""
    with open(os.path.join(HERE, "../tests/data/tokenizer/encode_cases.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "t" not in rec or rec["c"] not in CATEGORIES:
                continue
            if doc:
                doc += b"\n"
            doc += rec["t"].encode("utf-8")
            if len(doc) >= DOC_BYTES:
                docs.append(doc)
                doc = b""
    if doc:
        docs.append(doc)
    return [d.decode("utf-8") for d in docs], sum(len(d) for d in docs)


def measure(fn, min_seconds):
    fn()  # warm the BPE cache, as the C++ benchmark's first iterations do
    passes, start = 0, time.perf_counter()
    while True:
        fn()
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return passes / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default=os.environ.get(
        "TANDEM_TOKENIZER_DIR", os.path.join(HERE, "../../shared/data/deepseek-v3")))
    ap.add_argument("--cpp-bench", help="path of the built tokenizer_bench")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    import tokenizers
    tok = tokenizers.Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    docs, nbytes = documents()
    print(f"text: {len(docs)} documents, {nbytes / 1e6:.2f} MB; tokenizers {tokenizers.__version__}")

    def one_thread():
        for d in docs:
            tok.encode(d, add_special_tokens=False)

    def batch():
        tok.encode_batch(docs, add_special_tokens=False)

    py1 = measure(one_thread, args.seconds) * nbytes / 1e6
    pyn = measure(batch, args.seconds) * nbytes / 1e6
    print(f"tokenizers 1 thread:        {py1:8.2f} MB/s")
    print(f"tokenizers encode_batch:    {pyn:8.2f} MB/s ({os.cpu_count()} CPUs)")
    if not args.cpp_bench:
        return
    out = subprocess.run([args.cpp_bench, "--benchmark_format=json", "--benchmark_filter=BM_Encode"],
                         check=True, capture_output=True, text=True).stdout
    runs = json.loads(out)["benchmarks"]
    cpp1 = next(r for r in runs if r["name"].endswith("real_time") and "threads" not in r["name"])
    cppn = next(r for r in runs if "threads:" in r["name"])
    c1, cn = cpp1["bytes_per_second"] / 1e6, cppn["bytes_per_second"] / 1e6
    print(f"tandem 1 thread:            {c1:8.2f} MB/s   ratio to tokenizers {c1 / py1:.2f}x")
    print(f"tandem {cppn['threads']} threads:           {cn:8.2f} MB/s   ratio to encode_batch {cn / pyn:.2f}x")


if __name__ == "__main__":
    main()
