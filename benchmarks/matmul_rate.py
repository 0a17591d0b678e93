"""fp32 matmul rate of this machine on the shapes of the tiny GRPO benchmark model (d=64, ffn 256,
vocab 103), and on a 1024 cube for the peak. The floor argument in BENCHMARKS.md ("Why 5x is out of
reach here") divides a step's matmul FLOPs by these rates.

    python benchmarks/matmul_rate.py --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def rate(rows: int, k: int, n: int, reps: int) -> float:
    a, w = torch.randn(rows, k), torch.randn(n, k)
    for _ in range(5):
        F.linear(a, w)
    t = time.perf_counter()
    for _ in range(reps):
        F.linear(a, w)
    return 2 * rows * k * n * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for rows in (128, 2048):  # a decode step's batch; a training pass's token positions
        for k, n in ((64, 192), (64, 512), (256, 64), (64, 103)):  # fused qkv, fused gate/up, down, LM head
            print(f"{rows:>5} x {k:>3} @ {k:>3} x {n:>3}: {rate(rows, k, n, args.reps):6.1f} GFLOP/s")
    print(f"1024 cube: {rate(1024, 1024, 1024, 10):6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
