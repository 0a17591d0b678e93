"""Bradley-Terry reward model on the built-in task's preference pairs: held-out pairwise accuracy.

    python benchmarks/rm_task.py [--model tiny-llama:d=64,l=2,h=4] [--task addition:scratchpad=1] [--steps 800]

Pairs are the task's right solution vs a plausible wrong one (a dropped carry or a one-digit slip in
one column); held-out pairs come from problems disjoint from training. The tests check a short run
rises well above chance; this script runs long enough for the >= 95% target.
"""
from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-llama:d=64,l=2,h=4")
    p.add_argument("--task", default="addition:scratchpad=1")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", default="/tmp/posttrain-rm-task")
    a = p.parse_args()
    torch.set_num_threads(1)
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.reward import RewardConfig, RewardOptions, RewardTrainer

    cfg = RewardConfig(
        model=ModelConfig(name=a.model), data=DataConfig(path=f"task:{a.task}", train_rows=20000, eval_rows=400),
        optim=OptimConfig(lr=a.lr, warmup_steps=10), rm=RewardOptions(pairs_per_step=32),
        train=TrainConfig(out=a.out, max_steps=a.steps, progress=False, log_every=50, eval_every=200),
    )
    out = RewardTrainer(cfg).train()
    print(json.dumps({k: v for k, v in out.items() if k.startswith("eval/")}))
    print(f"{a.model} on task:{a.task}, {a.steps} steps x 32 pairs: held-out pairwise accuracy {out['eval/pairwise_accuracy']:.3f}")


if __name__ == "__main__":
    main()
