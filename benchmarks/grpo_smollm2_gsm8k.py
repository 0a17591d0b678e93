"""GRPO end to end on a real model: SmolLM2-135M-Instruct on GSM8K training rows, math reward.

    python benchmarks/grpo_smollm2_gsm8k.py                         # 2 steps, 2 prompts x 4 samples
    python benchmarks/grpo_smollm2_gsm8k.py --steps 5 --max-new-tokens 256

Reads ../shared/data/gsm8k/train.jsonl (question / answer, the gold answer after '#### '), writes
prompt/answer rows, and runs `posttrain.trainers.rl` with `rl.reward=math` (math-verify, boxed /
#### / last number). Reports per-step reward, truncation, rollout/update time and completions/s.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer

INSTRUCTION = "Solve the problem step by step. End with the final answer on its own line as '#### <number>'."


def write_rows(src: Path, dst: Path, n: int) -> int:
    rows = []
    with open(src) as f:
        for line in f:
            if len(rows) >= n:
                break
            r = json.loads(line)
            gold = r["answer"].split("####")[-1].strip().replace(",", "")
            rows.append({"prompt": [{"role": "user", "content": f"{r['question']}\n\n{INSTRUCTION}"}], "answer": gold})
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return len(rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--kl-coef", type=float, default=0.0, help="0: no reference model (saves a forward pass and a model copy)")
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared (oversubscribed) CPU")
    p.add_argument("--out", default="runs/bench_grpo_smollm2_gsm8k")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows_file = Path(args.out) / "gsm8k_rl.jsonl"
    n = write_rows(Path(args.data), rows_file, args.prompts_per_step * args.steps * 4)
    cfg = RLConfig(
        algo="grpo",
        model=ModelConfig(name="smollm2-135m-instruct"),
        data=DataConfig(path=str(rows_file), train_rows=n, eval_rows=0, max_length=1024),
        optim=OptimConfig(lr=args.lr, schedule="constant"),
        train=TrainConfig(out=args.out, max_steps=args.steps, progress=False, eval_every=-1),
        rl=RLOptions(reward="math", prompts_per_step=args.prompts_per_step, samples_per_prompt=args.samples_per_prompt,
                     max_new_tokens=args.max_new_tokens, sequences_per_microbatch=4, show_every=1, temperature=1.0,
                     kl_coef=args.kl_coef),
    )
    t0 = time.perf_counter()
    trainer = RLTrainer(cfg)
    load_s = time.perf_counter() - t0
    steps = []
    for _ in range(args.steps):
        t = time.perf_counter()
        m = trainer.step()
        steps.append({k: round(m.get(k, float("nan")), 4) for k in (
            "reward_mean", "reward_std", "truncated_share", "zero_variance_group_share", "completion_tokens_mean",
            "kl", "entropy", "grad_norm", "rollout/logprob_abs_diff", "reward/missing", "time/rollout_s", "time/update_s")})
        steps[-1]["step_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps({"step": trainer.step_num, **steps[-1]}), flush=True)
    total = sum(s["step_s"] for s in steps)
    seqs = args.steps * args.prompts_per_step * args.samples_per_prompt
    print(f"SmolLM2-135M-Instruct GRPO on GSM8K: {args.steps} steps x {args.prompts_per_step} prompts x {args.samples_per_prompt} samples, "
          f"max {args.max_new_tokens} new tokens; model load {load_s:.0f}s; {total:.0f}s of steps = {seqs / total:.2f} completions/s; "
          f"mean reward per step {[s['reward_mean'] for s in steps]}")


if __name__ == "__main__":
    main()
