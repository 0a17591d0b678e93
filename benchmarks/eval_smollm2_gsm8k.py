"""`posttrain eval` on GSM8K test with SmolLM2-135M-Instruct, offline: greedy and maj@4 (4 samples at T=0.7).

    python benchmarks/eval_smollm2_gsm8k.py --limit 300 --out runs/bench_gsm8k

Runs the stage through the CLI entry point exactly as a user would, then prints the markdown table
(accuracy, maj@4, pass@4, average tokens, unparseable answers, tokens/s). Resumable: re-running with
the same --out continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from posttrain.cli import main as cli_main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--out", default="runs/bench_gsm8k")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--problems-per-batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rc = cli_main([
        "eval", "--benchmark", "gsm8k", "--model", "smollm2-135m-instruct", "--data.root", args.data_root,
        "--data.limit", str(args.limit), "--sampling.n", "4", "--sampling.ks", "1,4", "--sampling.temperature", "0.7",
        "--sampling.max_new_tokens", str(args.max_new_tokens), "--sampling.problems_per_batch", str(args.problems_per_batch),
        "--sampling.sequences_per_batch", "64", "--out", args.out,
    ])
    if rc:
        raise SystemExit(rc)
    res = json.loads((Path(args.out) / "results.json").read_text())
    print((Path(args.out) / "results.md").read_text())
    print(json.dumps(res["metrics"], indent=1))


if __name__ == "__main__":
    main()
