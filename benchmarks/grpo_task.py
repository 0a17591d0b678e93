"""GRPO on a built-in task: SFT a tiny model to a middling held-out accuracy, then GRPO, and report
held-out greedy accuracy against wall-clock time.

    python benchmarks/grpo_task.py                      # addition:digits=2, tiny-llama d=64 l=2
    python benchmarks/grpo_task.py --task countdown --minutes 10

The SFT phase stops as soon as held-out accuracy reaches --sft-target (it is not timed against the
budget); the GRPO phase runs for --minutes of wall-clock time, evaluating every --eval-every steps
on the same held-out problems (disjoint from the training prompts by construction).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer
from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer


def sft_phase(args) -> tuple:
    cfg = SFTConfig(
        model=ModelConfig(name=args.model),
        data=DataConfig(path=f"task:{args.task}", train_rows=20000, eval_rows=args.eval_rows),
        optim=OptimConfig(lr=3e-3, schedule="constant"),
        train=TrainConfig(out=f"{args.out}/sft", max_steps=100000, progress=False, seed=args.seed),
        sft=SFTOptions(sequences_per_step=64, sequences_per_microbatch=64, eval_max_new_tokens=args.max_new_tokens),
    )
    sft = SFTTrainer(cfg)
    t0, acc = time.perf_counter(), 0.0
    while acc < args.sft_target and sft.step < args.sft_max_steps:
        for _ in range(25):
            sft.train_step()
        acc = sft.evaluate()["eval/accuracy"]
        print(f"sft step {sft.step}: held-out accuracy {acc:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return sft.model, sft.tokenizer, acc, sft.step, time.perf_counter() - t0


def grpo_phase(args, model, tokenizer) -> list[dict]:
    cfg = RLConfig(
        algo=args.algo,
        model=ModelConfig(name=args.model),
        data=DataConfig(path=f"task:{args.task}", train_rows=20000, eval_rows=args.eval_rows),
        optim=OptimConfig(lr=args.lr, schedule="constant"),
        train=TrainConfig(out=f"{args.out}/grpo", max_steps=100000, progress=False, seed=args.seed, eval_every=-1),
        rl=RLOptions(prompts_per_step=args.prompts_per_step, samples_per_prompt=args.samples_per_prompt,
                     max_new_tokens=args.max_new_tokens, sequences_per_microbatch=256, show_every=0, kl_coef=args.kl_coef),
    )
    trainer = RLTrainer(cfg, model=model, tokenizer=tokenizer)
    curve = [{"step": 0, "seconds": 0.0, "accuracy": trainer.evaluate()["eval/accuracy"]}]
    print(f"grpo step 0: held-out accuracy {curve[0]['accuracy']:.3f}", flush=True)
    t0, train_s = time.perf_counter(), 0.0
    while train_s < args.minutes * 60:
        ts = time.perf_counter()
        m = trainer.step()
        train_s += time.perf_counter() - ts
        if trainer.step_num % args.eval_every == 0:
            acc = trainer.evaluate()["eval/accuracy"]
            curve.append({"step": trainer.step_num, "seconds": round(train_s, 1), "accuracy": acc,
                          "reward_mean": round(m.get("reward_mean", float("nan")), 3)})
            print(f"grpo step {trainer.step_num}: held-out accuracy {acc:.3f}, train reward {m.get('reward_mean', float('nan')):.3f} "
                  f"({train_s:.0f}s training, {time.perf_counter() - t0:.0f}s with evals)", flush=True)
    return curve


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="addition:digits=2")
    p.add_argument("--model", default="tiny-llama:d=64,l=2,h=4")
    p.add_argument("--algo", default="grpo")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--sft-target", type=float, default=0.35)
    p.add_argument("--sft-max-steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-coef", type=float, default=0.0)
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--samples-per-prompt", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--eval-rows", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for tiny models on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_grpo_task")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, sft_acc, sft_steps, sft_s = sft_phase(args)
    curve = grpo_phase(args, model, tok)
    start, best = curve[0]["accuracy"], max(c["accuracy"] for c in curve)
    final = curve[-1]["accuracy"]
    print(json.dumps({"task": args.task, "model": args.model, "algo": args.algo, "sft_steps": sft_steps,
                      "sft_seconds": round(sft_s), "curve": curve}))
    print(f"held-out greedy accuracy: {start:.3f} after SFT -> {final:.3f} after {curve[-1]['seconds']:.0f}s of "
          f"{args.algo} (best {best:.3f}); gain {100 * (final - start):+.1f} points")


if __name__ == "__main__":
    main()
