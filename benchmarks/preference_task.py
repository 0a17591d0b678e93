"""Held-out exact-match accuracy before/after preference optimization from an SFT checkpoint.

    python benchmarks/preference_task.py [--sft DIR] [--task addition:scratchpad=1] [--steps 60]
        [--self-generated 2] [--rows 640] [--losses dpo,ipo,simpo,orpo,kto,rpo,sft] [--lr LR] [--loss-args rpo_alpha=10]

Without --sft, first runs SFT on the task (tiny-llama, 400-step cosine schedule, 64 sequences per
step) and starts from its step-300 checkpoint (modest accuracy). Then, from that same checkpoint,
runs each loss (DPO, IPO, SimPO, ORPO, KTO) on task preference pairs (right answer vs a plausible
wrong one) and prints held-out exact-match accuracy (greedy) before and after, plus held-out
preference accuracy. Prints a markdown table for BENCHMARKS.md.

--self-generated K replaces each train pair's synthetic rejection with one of K samples the SFT
model itself got wrong (PreferenceOptions.self_generated). `sft` (NLL on the chosen side only, same
steps and lr) is the control: from a mid-training checkpoint any further training on right answers
raises accuracy, so a preference loss is only doing something when it beats that row.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

LOSSES = {  # name -> (beta, lr, extra loss_args)
    "dpo": (0.1, 2e-4, {}),
    "ipo": (0.1, 2e-4, {}),
    "simpo": (2.0, 2e-4, {"gamma": "0.5"}),
    "orpo": (0.1, 2e-4, {}),
    "kto": (0.1, 2e-4, {}),
    "rpo": (0.1, 2e-4, {}),
    "sft": (0.1, 2e-4, {}),
}


def sft_checkpoint(task: str, out: str) -> str:
    from posttrain.trainers.common import DataConfig, TrainConfig
    from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer

    cfg = SFTConfig(data=DataConfig(path=f"task:{task}"), sft=SFTOptions(sequences_per_step=64, sequences_per_microbatch=64),
                    train=TrainConfig(out=out, max_steps=400, save_every=50, keep_checkpoints=10, eval_every=100, progress=False))
    SFTTrainer(cfg).train()
    return f"{out}/checkpoints/step-0000300"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sft", default="")
    p.add_argument("--task", default="addition:scratchpad=1")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--lr", type=float, default=0.0, help="override every loss's lr")
    p.add_argument("--loss-args", default="", help="extra loss hyper-parameters for every loss: rpo_alpha=10,gamma=0.5")
    p.add_argument("--beta", type=float, default=0.0, help="override every loss's beta")
    p.add_argument("--rows", type=int, default=0, help="train problems (default steps x pairs)")
    p.add_argument("--self-generated", type=int, default=0, help="samples per problem for self-generated rejections")
    p.add_argument("--max-new-tokens", type=int, default=0, help="eval generation budget (default 48 with a scratchpad, else 8)")
    p.add_argument("--out", default="/tmp/posttrain-preference-task")
    a = p.parse_args()
    torch.set_num_threads(1)
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.preference import PreferenceConfig, PreferenceOptions, PreferenceTrainer

    sft = a.sft or sft_checkpoint(a.task, f"{a.out}/sft")
    rows = []
    for name in a.losses.split(","):
        beta, lr, extra = LOSSES[name]
        lr, beta = a.lr or lr, a.beta or beta
        extra = {**extra, **dict(kv.split("=", 1) for kv in filter(None, a.loss_args.split(",")))}
        cfg = PreferenceConfig(
            model=ModelConfig(name=sft), data=DataConfig(path=f"task:{a.task}", train_rows=a.rows or a.steps * a.pairs, eval_rows=200),
            optim=OptimConfig(lr=lr, schedule="constant"), train=TrainConfig(out=f"{a.out}/{name}", max_steps=a.steps, progress=False, log_every=10),
            pref=PreferenceOptions(pairs_per_step=a.pairs, pairs_per_microbatch=a.pairs, loss_args=extra,
                                   eval_max_new_tokens=a.max_new_tokens or (48 if "scratchpad" in a.task else 8), self_generated=a.self_generated),
            loss=name, beta=beta,
        )
        t0 = time.perf_counter()
        r = PreferenceTrainer(cfg).train()
        rows.append((name, beta, lr, r["eval_before/accuracy"], r["eval/accuracy"], r["eval/rewards/accuracy"], time.perf_counter() - t0))
        print(json.dumps({"loss": name, "before": r["eval_before/accuracy"], "after": r["eval/accuracy"]}), flush=True)
    print(f"\nstart: {sft}; task {a.task}; {a.steps} steps x {a.pairs} pairs, {a.rows or a.steps * a.pairs} train problems, "
          f"rejections: {f'self-generated ({a.self_generated} samples)' if a.self_generated else 'synthetic'}; 200 held-out problems, greedy")
    print("| loss | beta | lr | exact match before | after | held-out pref. accuracy | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, beta, lr, before, after, pref, s in rows:
        print(f"| {name} | {beta} | {lr:g} | {before:.3f} | {after:.3f} | {pref:.3f} | {s:.0f} |")


if __name__ == "__main__":
    main()
