"""`posttrain data passrate` on GSM8K training problems with SmolLM2-135M-Instruct, offline, end to end.

    python benchmarks/passrate_smollm2_gsm8k.py --limit 100 --k 4 --out runs/bench_passrate

Runs the stage through the CLI entry point as a user would: the first --limit rows of
``gsm8k/train.jsonl`` (question -> prompt, the full solution as the answer; math-verify reads its
``#### n``), each sent as one chat message with the Qwen2.5-Math instruction that `posttrain eval`
uses for GSM8K, k samples at T = 0.7 (the temperature of the eval benchmarks; --temperature), 384 new
tokens. Prints the report (pass-rate histogram, mean length, tokens/s) and the wall time. Resumable:
re-running with the same --out continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from posttrain.cli import main as cli_main
from posttrain.eval.benchmarks import MATH_INSTRUCTION


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--data", default="../shared/data/gsm8k/train.jsonl")
    ap.add_argument("--out", default="runs/bench_passrate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts-per-batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rc = cli_main([
        "data", "passrate", "--data", args.data, "--data.columns", "question=prompt", "--data.limit", str(args.limit),
        "--model", "smollm2-135m-instruct", "--passrate.k", str(args.k), "--passrate.temperature", str(args.temperature),
        "--passrate.max_new_tokens", str(args.max_new_tokens), "--passrate.chat", "true",
        "--passrate.template", "{prompt}\n" + MATH_INSTRUCTION, "--passrate.prompts_per_batch", str(args.prompts_per_batch),
        "--passrate.sequences_per_batch", "64", "--progress", "false", "--out", args.out,
    ])
    if rc:
        raise SystemExit(rc)
    wall = time.perf_counter() - t0
    print((Path(args.out) / "report.md").read_text())
    rep = json.loads((Path(args.out) / "report.json").read_text())
    print(json.dumps({k: rep[k] for k in ("scored", "mean_pass_rate", "pass_rate_counts", "mean_length", "no_answer",
                                          "truncated", "tokens_per_s", "seconds")}, indent=1))
    print(f"wall time, model load included: {wall:.0f} s")


if __name__ == "__main__":
    main()
