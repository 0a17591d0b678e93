"""A PRM from SmolLM2-135M-Instruct trained on PRM800K phase-1 rows, scored on ProcessBench (first-error F1).

    python benchmarks/prm_processbench.py --rows 600 --steps 40 --pb-limit 200

Sized for a CPU budget of about ten minutes: PRM800K rows with at most --max-prior earlier steps,
shuffled (seed 0), at most --max-length tokens; only the top --train-layers transformer blocks and the
head are trained (the rest frozen, so backward stops there). ProcessBench gsm8k (first --pb-limit
samples) is scored once; F1 is reported at the paper's threshold 0.5 and, as an upper bound only, at
the best threshold on the same data. Baselines: any constant prediction (F1 = 0), and the same
backbone with the untrained head.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from posttrain.eval.processbench import baseline_f1, first_error, load_processbench, processbench_f1
from posttrain.models import load_model_and_tokenizer
from posttrain.models.prm import PRMScorer
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.prm import PRMConfig, PRMOptions, PRMTrainer, prm800k_rows

DATA = Path("../shared/data")


def pick_rows(args) -> list[dict]:
    rows, skipped = prm800k_rows(DATA / "prm800k/phase1_train_plus.stepwise-critic.parquet", neutral_label=1.0,
                                 on_error="skip")
    print(f"PRM800K: {len(rows)} stepwise rows, {skipped} skipped (no rating)")
    rows = [r for r in rows if len(r["completions"]) <= args.max_prior + 1]
    random.Random(0).shuffle(rows)
    return rows[: args.rows]


def freeze_lower(model, train_layers: int) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.model.layers[-train_layers:]:
        for p in block.parameters():
            p.requires_grad_(True)
    for p in model.model.norm.parameters():
        p.requires_grad_(True)


def score(scorer, pb) -> list[list[float]]:
    return [scorer.score_steps(r["problem"], [r["steps"]])[0] for r in pb]


def f1_at(scores, labels, t) -> dict:
    return processbench_f1([first_error(s, t) for s in scores], labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--max-prior", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--train-layers", type=int, default=6)
    ap.add_argument("--pb-limit", type=int, default=200)
    ap.add_argument("--out", default="runs/bench_processbench")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pb = load_processbench(DATA / "processbench/gsm8k.json", args.pb_limit)
    labels = [r["label"] for r in pb]
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    freeze_lower(model, args.train_layers)
    cfg = PRMConfig(
        model=ModelConfig(name="smollm2-135m-instruct"), data=DataConfig(path="prm800k", max_length=args.max_length),
        optim=OptimConfig(lr=1e-4, warmup_steps=5), train=TrainConfig(out=args.out, max_steps=args.steps, progress=False),
        prm=PRMOptions(sequences_per_step=16, sequences_per_microbatch=8, eval_share=0.0),
    )
    tr = PRMTrainer(cfg, model, tok, rows=pick_rows(args))
    scorer = PRMScorer(tr.prm, tok, batch_size=8, max_length=1024)
    untrained = score(scorer, pb)
    t1 = time.perf_counter()
    res = tr.train()
    t2 = time.perf_counter()
    trained = score(scorer, pb)
    grid = [i / 20 for i in range(1, 20)]
    best_t = max(grid, key=lambda t: f1_at(trained, labels, t)["f1"])
    report = {
        "processbench_split": "gsm8k", "samples": len(pb), "prm800k_rows": args.rows, "train_steps": args.steps,
        "trainable_layers": args.train_layers, "train_loss_last": res.get("loss"),
        "trivial_baseline_f1": baseline_f1(labels),
        "untrained_head_f1@0.5": f1_at(untrained, labels, 0.5),
        "trained_f1@0.5": f1_at(trained, labels, 0.5),
        "trained_best_threshold (upper bound)": {"threshold": best_t, **f1_at(trained, labels, best_t)},
        "seconds": {"untrained_scoring": t1 - t0, "training": t2 - t1, "total": time.perf_counter() - t0},
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
