"""Held-out exact-match accuracy before/after preference optimization from an SFT checkpoint.

    python benchmarks/preference_task.py [--sft DIR] [--task addition:digits=2] [--steps 60]
        [--self-generated 4] [--losses dpo,ipo,simpo,orpo,kto,rpo,sft] [--lr LR] [--beta B] [--loss-args k=v]

Without --sft, first SFTs tiny-llama d=64 l=2 on the task (64 sequences per step, constant lr 3e-3,
425 steps, seed 0: held-out accuracy 0.41, a checkpoint with modest accuracy) and starts from it.
Then, from that same checkpoint, runs each loss on task preference pairs and prints held-out
exact-match accuracy (greedy) before and after, plus held-out preference accuracy, as a markdown
table for BENCHMARKS.md.

--self-generated K (default 4) replaces each train pair's synthetic rejection with one of K samples
the SFT model itself got wrong (PreferenceOptions.self_generated); 0 keeps the synthetic slips.
--step-pairs keeps only each pair's first differing step (Step-DPO). `sft` (NLL on the chosen side
only, same steps and lr) is the control: from a mid-training checkpoint any further training on
right answers raises accuracy, so a preference loss is only doing more than SFT when it beats that
row. The per-loss beta / lr below are the settings that raised accuracy in the sweep recorded in
BENCHMARKS.md (beta 0.1 lowered it for DPO, IPO and KTO).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

LOSSES = {  # name -> (beta, lr, extra loss_args)
    "dpo": (1.0, 1e-4, {}),
    "ipo": (1.0, 1e-4, {}),
    "simpo": (10.0, 1e-5, {"gamma": "3"}),
    "orpo": (0.1, 1e-4, {}),
    "kto": (1.0, 1e-4, {}),
    "rpo": (1.0, 1e-4, {}),
    "sft": (0.1, 1e-4, {}),
}


def sft_checkpoint(task: str, out: str, steps: int = 425) -> str:
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer

    cfg = SFTConfig(model=ModelConfig(name="tiny-llama:d=64,l=2,h=4"),
                    data=DataConfig(path=f"task:{task}", train_rows=20000, eval_rows=200),
                    optim=OptimConfig(lr=3e-3, schedule="constant"),
                    sft=SFTOptions(sequences_per_step=64, sequences_per_microbatch=64, eval_max_new_tokens=8),
                    train=TrainConfig(out=out, max_steps=steps, progress=False, seed=0))
    tr = SFTTrainer(cfg)
    while tr.step < steps:
        tr.train_step()
    return str(tr.save())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sft", default="")
    p.add_argument("--task", default="addition:digits=2")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--lr", type=float, default=0.0, help="override every loss's lr")
    p.add_argument("--loss-args", default="", help="extra loss hyper-parameters for every loss: rpo_alpha=10,gamma=0.5")
    p.add_argument("--beta", type=float, default=0.0, help="override every loss's beta")
    p.add_argument("--rows", type=int, default=0, help="train problems (default steps x pairs)")
    p.add_argument("--self-generated", type=int, default=4, help="samples per problem for self-generated rejections")
    p.add_argument("--step-pairs", action="store_true", help="Step-DPO pairs: keep only the first differing step")
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
                                   eval_max_new_tokens=a.max_new_tokens or (48 if "scratchpad" in a.task else 8), self_generated=a.self_generated, step_pairs=a.step_pairs),
            loss=name, beta=beta,
        )
        t0 = time.perf_counter()
        r = PreferenceTrainer(cfg).train()
        rows.append((name, beta, lr, r["eval_before/accuracy"], r["eval/accuracy"], r["eval/rewards/accuracy"], time.perf_counter() - t0))
        print(json.dumps({"loss": name, "before": r["eval_before/accuracy"], "after": r["eval/accuracy"]}), flush=True)
    print(f"\nstart: {sft}; task {a.task}; {a.steps} steps x {a.pairs} pairs, {a.rows or a.steps * a.pairs} train problems, "
          f"rejections: {f'self-generated ({a.self_generated} samples)' if a.self_generated else 'synthetic'}"
          f"{', step pairs (Step-DPO)' if a.step_pairs else ''}; 200 held-out problems, greedy")
    print("| loss | beta | lr | exact match before | after | held-out pref. accuracy | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, beta, lr, before, after, pref, s in rows:
        print(f"| {name} | {beta} | {lr:g} | {before:.3f} | {after:.3f} | {pref:.3f} | {s:.0f} |")


if __name__ == "__main__":
    main()
