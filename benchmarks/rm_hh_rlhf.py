"""A Bradley-Terry reward model from SmolLM2-135M-Instruct on a few hundred HH-RLHF pairs.

    python benchmarks/rm_hh_rlhf.py [--train 300] [--eval 100] [--steps 1 epoch] [--max-length 256]

Reads ../shared/data/hh-rlhf/helpful-base-test.jsonl.gz (implicit-prompt rows: the prompt is the
shared prefix up to the last "\\n\\nAssistant:"), trains on the first --train pairs and reports
held-out pairwise accuracy on the last --eval pairs (disjoint rows), before and after training.
Chance is 0.5.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/hh-rlhf/helpful-base-test.jsonl.gz")
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--eval", type=int, default=100)
    p.add_argument("--pairs-per-step", type=int, default=8)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/posttrain-rm-hh")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.reward import RewardConfig, RewardOptions, RewardTrainer

    steps = max(1, int(a.epochs * a.train / a.pairs_per_step))
    cfg = RewardConfig(
        model=ModelConfig(name="smollm2-135m-instruct"),
        data=DataConfig(path=a.data, train_rows=a.train, eval_rows=a.eval, max_length=a.max_length, on_error="skip"),
        optim=OptimConfig(lr=a.lr, warmup_steps=max(1, steps // 10)),
        train=TrainConfig(out=a.out, max_steps=steps, progress=False, log_every=5),
        rm=RewardOptions(pairs_per_step=a.pairs_per_step, pairs_per_microbatch=4, eval_pairs_per_batch=8),
    )
    t0 = time.perf_counter()
    tr = RewardTrainer(cfg)
    before = tr.evaluate()
    print(json.dumps({"before": before}), flush=True)
    out = tr.train()
    print(json.dumps({"after": {k: v for k, v in out.items() if k.startswith("eval/")}, "seconds": time.perf_counter() - t0}))
    print(f"SmolLM2-135M BT reward model, {len(tr.pairs)} HH-RLHF train pairs, {steps} steps x {a.pairs_per_step}, "
          f"max_length {a.max_length}: held-out pairwise accuracy {before['eval/pairwise_accuracy']:.3f} -> "
          f"{out['eval/pairwise_accuracy']:.3f} on {out['eval/pairs']} pairs")


if __name__ == "__main__":
    main()
