"""Span attribution speed: index build rate, and attribution of a 256-token output against 100,000 contributions.

Pinned to one CPU core. Contributions are 16-128 tokens drawn from a Zipf(1.1) distribution over a
32,000-token vocabulary (so common n-grams exist, as in text); each output copies 2-4 runs of 20-60
tokens from random contributions between novel Zipf tokens. Goal: p50 under 20 ms.

    OMP_NUM_THREADS=1 python benchmarks/attribution/bench_attribution.py [--contributions 100000] [--infini-gram]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from eth_utils import to_checksum_address

from loraledger.runtime.attribution import AttributionIndex, Contribution, DatanetShare, infini_gram_available

VOCAB = 32_000


def zipf_tokens(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.zipf(1.1, size=n) - 1) % VOCAB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contributions", type=int, default=100_000)
    parser.add_argument("--outputs", type=int, default=200)
    parser.add_argument("--infini-gram", action="store_true", help="also time the infini-gram backend")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rng = np.random.default_rng(0)
    contributors = [to_checksum_address(f"0x{i + 1:040x}") for i in range(1000)]
    lengths = rng.integers(16, 129, size=args.contributions)
    flat = zipf_tokens(rng, int(lengths.sum()))
    docs, pos = [], 0
    for i, n in enumerate(lengths.tolist()):
        docs.append((Contribution(1 + i % 4, contributors[i % 1000], f"0x{i:064x}"), flat[pos : pos + n]))
        pos += n
    datanets = [DatanetShare(d, 2500) for d in (1, 2, 3, 4)]

    t0 = time.perf_counter()
    index = AttributionIndex.build(docs, datanets)
    build_s = time.perf_counter() - t0
    tokens = int(index.corpus.shape[0])
    print(f"index: {args.contributions:,} contributions, {tokens:,} tokens, built in {build_s:.2f} s "
          f"({tokens / build_s / 1e6:.2f} M tokens/s, {args.contributions / build_s:,.0f} contributions/s)")

    outputs = []
    for _ in range(args.outputs):
        parts = []
        while sum(map(len, parts)) < 256:
            src = docs[int(rng.integers(len(docs)))][1]
            n = min(len(src), int(rng.integers(20, 61)))
            start = int(rng.integers(0, len(src) - n + 1))
            parts.append(src[start : start + n])
            parts.append(zipf_tokens(rng, int(rng.integers(5, 40))))
        outputs.append(np.concatenate(parts)[:256].tolist())

    def timed(idx: AttributionIndex, label: str) -> None:
        idx.attribute(outputs[0], adapter="bench")  # warm
        times, methods = [], set()
        for out in outputs:
            t = time.perf_counter()
            record = idx.attribute(out, adapter="bench")
            _ = record.hash
            times.append(time.perf_counter() - t)
            methods.add(record.method)
        ms = np.asarray(times) * 1e3
        print(f"{label}: attribute 256 tokens + record hash: p50 {np.percentile(ms, 50):.2f} ms, "
              f"p90 {np.percentile(ms, 90):.2f} ms, max {ms.max():.2f} ms over {len(ms)} outputs ({sorted(methods)})")

    timed(index, "numpy suffix array")
    if args.infini_gram:
        if not infini_gram_available():
            print("infini-gram: not installed")
            return
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp))
            t0 = time.perf_counter()
            ig = AttributionIndex.load(Path(tmp), backend="infini-gram")
            print(f"infini-gram: token files + index built in {time.perf_counter() - t0:.2f} s")
            timed(ig, "infini-gram")


if __name__ == "__main__":
    main()
