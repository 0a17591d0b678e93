"""Bradley-Terry reward model on the built-in task's preference pairs: held-out pairwise accuracy.

    python benchmarks/rm_task.py                       # SFT backbone first (cached in --out), then the RM
    python benchmarks/rm_task.py --backbone DIR        # start the RM from an existing causal checkpoint
    python benchmarks/rm_task.py --backbone tiny-llama:d=64,l=2,h=4 --lr 3e-3 --steps 800   # from scratch

Pairs are the task's right solution vs a plausible wrong one (a dropped carry or a one-digit slip in
one column, every later line following from the slip); held-out pairs come from problems disjoint
from training. As in InstructGPT, the reward model starts from the SFT policy: by default the script
first SFTs tiny-llama d=128 l=4 on the task (the demo's SFT settings: 64 sequences/step, lr 3e-3,
50 warm-up steps, cosine over 700 steps to 5%) and puts the scalar head on that backbone. The tests
check a short run rises well above chance; this script runs long enough for the >= 95% target.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def sft_backbone(task: str, out: str, steps: int) -> str:
    from posttrain.checkpoint import latest_checkpoint
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer

    done = latest_checkpoint(Path(out))
    if done is not None:
        return str(done)
    cfg = SFTConfig(model=ModelConfig(name="tiny-llama:d=128,l=4,h=4"),
                    data=DataConfig(path=f"task:{task}", train_rows=20000, eval_rows=200),
                    optim=OptimConfig(lr=3e-3, warmup_steps=50, min_lr_ratio=0.05),
                    sft=SFTOptions(sequences_per_step=64, sequences_per_microbatch=64, eval_max_new_tokens=48),
                    train=TrainConfig(out=out, max_steps=steps, progress=False, seed=0, eval_every=steps))
    out_metrics = SFTTrainer(cfg).train()
    print(f"SFT backbone: held-out exact match {out_metrics.get('eval/accuracy')}", flush=True)
    return str(latest_checkpoint(Path(out)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="", help="causal checkpoint or model spec; default: SFT one first")
    p.add_argument("--task", default="addition:scratchpad=1")
    p.add_argument("--sft-steps", type=int, default=700)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default="/tmp/posttrain-rm-task")
    a = p.parse_args()
    torch.set_num_threads(1)
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.reward import RewardConfig, RewardOptions, RewardTrainer

    backbone = a.backbone or sft_backbone(a.task, f"{a.out}/sft", a.sft_steps)
    cfg = RewardConfig(
        model=ModelConfig(name=backbone), data=DataConfig(path=f"task:{a.task}", train_rows=20000, eval_rows=400),
        optim=OptimConfig(lr=a.lr, warmup_steps=10), rm=RewardOptions(pairs_per_step=32),
        train=TrainConfig(out=f"{a.out}/rm", max_steps=a.steps, progress=False, log_every=50, eval_every=200),
    )
    out = RewardTrainer(cfg).train()
    print(json.dumps({k: v for k, v in out.items() if k.startswith("eval/")}))
    print(f"RM from {backbone} on task:{a.task}, {a.steps} steps x 32 pairs: "
          f"held-out pairwise accuracy {out['eval/pairwise_accuracy']:.3f} on {out['eval/pairs']} pairs")


if __name__ == "__main__":
    main()
