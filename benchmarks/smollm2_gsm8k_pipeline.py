"""SmolLM2-135M-Instruct post-trained offline on GSM8K: SFT, then GRPO with the math reward, each
stage scored greedy on the same GSM8K test problems, with 95% Wilson intervals.

    python benchmarks/smollm2_gsm8k_pipeline.py --out runs/smol_pipeline          # the recorded run (BENCHMARKS.md)
    python benchmarks/smollm2_gsm8k_pipeline.py --out /tmp/smoke --test-limit 8 --sft-rows 16 \
        --sft-steps 2 --rl-steps 1 --rl-prompts 2 --rl-samples 2 --max-new-tokens 32       # a smoke run

Every stage runs through the command line exactly as a user types it (`posttrain eval`, `posttrain sft`,
`posttrain rl`), one subprocess each, so what is measured is the product. The stages:

1. `eval` of the base model: greedy, the first `--test-limit` problems of `gsm8k/test.jsonl`;
2. `sft` (full fine-tuning) on `--sft-rows` GSM8K training rows, rewritten into the evaluation's prompt
   (the question and eval's "reason step by step ... \\boxed{}" instruction as a chat message) and a
   completion that is the reference solution with its `<<...>>` calculator annotations removed and
   the final number in `\\boxed{}`;
3. `eval` of the SFT model;
4. `rl` (GRPO, `rl.reward=math`, no KL term) from the SFT model on the next `--rl-rows` training rows
   (none shared with SFT's);
5. `eval` of the GRPO model.

A stage whose output folder is complete is not run again, so a stopped run continues. The summary
(`summary.json`, `summary.md` in --out) has accuracy with its interval, tokens/s of each evaluation,
and the wall time of each stage.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."  # eval's MATH_INSTRUCTION


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def solution_text(answer: str) -> tuple[str, str]:
    """GSM8K's reference solution without calculator annotations, ending in a boxed final answer."""
    body, final = answer.rsplit("####", 1)
    final = final.strip().replace(",", "")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe final answer is $\\boxed{{{final}}}$.", final


def write_rows(src: Path, out: Path, sft_rows: int, rl_rows: int) -> tuple[Path, Path]:
    rows = [json.loads(line) for line in src.open()][: sft_rows + rl_rows]
    if len(rows) < sft_rows + rl_rows:
        raise SystemExit(f"{src}: {len(rows)} rows, fewer than --sft-rows + --rl-rows = {sft_rows + rl_rows}")
    sft_path, rl_path = out / "data" / "sft.jsonl", out / "data" / "rl.jsonl"
    sft_path.parent.mkdir(parents=True, exist_ok=True)
    with sft_path.open("w") as f:
        for r in rows[:sft_rows]:
            completion, _ = solution_text(r["answer"])
            prompt = [{"role": "user", "content": f"{r['question']}\n{INSTRUCTION}"}]
            f.write(json.dumps({"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}) + "\n")
    with rl_path.open("w") as f:
        for r in rows[sft_rows:]:
            _, final = solution_text(r["answer"])
            prompt = [{"role": "user", "content": f"{r['question']}\n{INSTRUCTION}"}]
            f.write(json.dumps({"prompt": prompt, "answer": final}) + "\n")
    return sft_path, rl_path


def run_stage(name: str, argv: list[str], done: Path, log: Path, threads: int) -> float:
    """Run `python -m posttrain ARGV` unless DONE exists; its output goes to LOG. Returns wall seconds
    (the recorded one when the stage was already complete)."""
    stamp = done.parent / f".{name}.seconds"
    if done.exists() and stamp.exists():
        print(f"[{name}] done already ({done})", flush=True)
        return float(stamp.read_text())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), POSTTRAIN_THREADS=str(threads))
    print(f"[{name}] posttrain {' '.join(argv)}", flush=True)
    t0 = time.time()
    with log.open("a") as f:
        rc = subprocess.call([sys.executable, "-m", "posttrain", *argv], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.time() - t0
    if rc or not done.exists():
        raise SystemExit(f"[{name}] failed (exit {rc}); see {log}")
    done.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{seconds:.1f}")
    print(f"[{name}] {seconds:.0f} s", flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/smol_pipeline")
    ap.add_argument("--test-limit", type=int, default=500, help="first N GSM8K test problems, scored greedy")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--sft-rows", type=int, default=320)
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-micro", type=int, default=4)
    ap.add_argument("--sft-lr", type=float, default=3e-5)
    ap.add_argument("--rl-rows", type=int, default=200)
    ap.add_argument("--rl-steps", type=int, default=4)
    ap.add_argument("--rl-prompts", type=int, default=4)
    ap.add_argument("--rl-samples", type=int, default=4)
    ap.add_argument("--rl-lr", type=float, default=3e-6)
    ap.add_argument("--problems-per-batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "stages.log"
    sft_data, rl_data = write_rows(DATA / "gsm8k" / "train.jsonl", out, args.sft_rows, args.rl_rows)
    common_eval = ["--benchmark", "gsm8k", "--data.root", str(DATA), "--data.limit", str(args.test_limit),
                   "--sampling.n", "0", "--sampling.max_new_tokens", str(args.max_new_tokens),
                   "--sampling.problems_per_batch", str(args.problems_per_batch), "--sampling.sequences_per_batch", "64",
                   "--train.progress", "false", "--train.check_overlap", "false"]
    seconds: dict[str, float] = {}

    def evaluate(stage: str, model: str) -> None:
        folder = out / f"eval_{stage}"
        seconds[f"eval_{stage}"] = run_stage(f"eval_{stage}", ["eval", "--model", model, *common_eval, "--out", str(folder)],
                                             folder / "results.json", log, args.threads)

    evaluate("base", "smollm2-135m-instruct")
    sft_out = out / "sft"
    seconds["sft"] = run_stage("sft", [
        "sft", "--model", "smollm2-135m-instruct", "--data", str(sft_data), "--data.eval_rows", "0",
        "--data.train_rows", str(args.sft_rows), "--data.max_length", "512",
        "--sft.sequences_per_step", str(args.sft_batch), "--sft.sequences_per_microbatch", str(args.sft_micro),
        "--optim.lr", str(args.sft_lr), "--optim.schedule", "cosine", "--optim.warmup_steps", str(max(1, args.sft_steps // 10)),
        "--train.max_steps", str(args.sft_steps), "--train.progress", "false", "--out", str(sft_out), "--train.overwrite", "true",
    ], sft_out / "config.yaml", log, args.threads)
    evaluate("sft", str(sft_out))
    rl_out = out / "grpo"
    seconds["grpo"] = run_stage("grpo", [
        "rl", "--algo", "grpo", "--model", str(sft_out), "--data", str(rl_data), "--data.eval_rows", "0",
        "--data.train_rows", str(args.rl_rows), "--data.max_length", "1024", "--rl.reward", "math",
        "--rl.prompts_per_step", str(args.rl_prompts), "--rl.samples_per_prompt", str(args.rl_samples),
        "--rl.max_new_tokens", str(args.max_new_tokens), "--rl.sequences_per_microbatch", "8",
        "--rl.kl_coef", "0", "--optim.lr", str(args.rl_lr), "--train.max_steps", str(args.rl_steps),
        "--train.progress", "false", "--rl.show_every", "0", "--out", str(rl_out), "--train.overwrite", "true",
    ], rl_out / "config.yaml", log, args.threads)
    evaluate("grpo", str(rl_out))
    summarize(out, seconds, args)


def summarize(out: Path, seconds: dict[str, float], args) -> None:
    rows = []
    for stage in ("base", "sft", "grpo"):
        res = json.loads((out / f"eval_{stage}" / "results.json").read_text())
        m = res["metrics"]
        n = int(m["num_problems"])
        acc = float(m["greedy_acc"])
        k = round(acc * n)
        lo, hi = wilson(k, n)
        rows.append({"stage": stage, "problems": n, "correct": k, "greedy": acc, "ci95": [lo, hi],
                     "avg_tokens": round(m["avg_greedy_tokens"], 1), "truncated": m.get("truncated"), "no_answer": m.get("no_answer"),
                     "tokens_per_s": round(m["tokens_per_s"], 1), "eval_s": seconds.get(f"eval_{stage}")})
    rl_metrics = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").open()]
    rewards = [round(r["reward_mean"], 3) for r in rl_metrics if "reward_mean" in r]
    summary = {"stages": rows, "train_s": {"sft": seconds.get("sft"), "grpo": seconds.get("grpo")},
               "grpo_reward_per_step": rewards, "args": vars(args)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["| after | problems | greedy correct | accuracy | 95% interval | avg tokens | truncated | tokens/s | eval s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['problems']} | {r['correct']} | {r['greedy']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
                     f"| {r['avg_tokens']} | {r['truncated']} | {r['tokens_per_s']} | {r['eval_s']:.0f} |")
    lines.append("")
    lines.append(f"SFT {seconds.get('sft', 0):.0f} s, GRPO {seconds.get('grpo', 0):.0f} s; GRPO reward per step: {rewards}")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
