"""A PRM from SmolLM2-135M-Instruct trained on PRM800K phase-1 rows, scored on ProcessBench (first-error F1).

    python benchmarks/prm_processbench.py --rows 600 --steps 40 --pb-limit 200

Sized for a CPU budget of about ten minutes: PRM800K rows with at most --max-prior earlier steps,
shuffled (seed 0), at most --max-length tokens; only the top --train-layers transformer blocks and the
head are trained (the rest frozen, so backward stops there). ProcessBench gsm8k (first --pb-limit
samples) is scored once; F1 is reported at the paper's threshold 0.5, at a threshold calibrated on
the other half of the samples (two folds: even / odd indices, each fold's threshold picked on the
other, F1 of the pooled predictions), and, as an upper bound only, at the best threshold on the same
data. Baselines: any constant prediction (F1 = 0), and the same backbone with the untrained head.
Every sample's step scores go to `scores.json`.

    python benchmarks/prm_processbench.py --trained runs/bench_processbench --pb-limit 400

re-scores a PRM already trained by this script (no training, no untrained baseline).
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
from posttrain.models.prm import PRMScorer, load_prm
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


GRID = [i / 100 for i in range(1, 100)]


def calibrated_f1(scores, labels) -> dict:
    """Two folds (even / odd indices): each fold is predicted at the threshold that maximises F1 on the
    other; F1 of all the predictions together, and the two thresholds."""
    preds, thresholds = [None] * len(scores), []
    for fold in (0, 1):
        cal = [i for i in range(len(scores)) if i % 2 != fold]
        t = max(GRID, key=lambda t: (f1_at([scores[i] for i in cal], [labels[i] for i in cal], t)["f1"], -abs(t - 0.5)))
        thresholds.append(t)
        for i in range(fold, len(scores), 2):
            preds[i] = first_error(scores[i], t)
    return {"thresholds": thresholds, **processbench_f1(preds, labels)}


def shuffled_f1(scores, labels, rounds: int = 30) -> dict:
    """Chance level of `calibrated_f1`: the same scores dealt to other samples with as many steps
    (so only the link between a solution and its scores is broken), `rounds` deals."""
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(scores):
        by_len.setdefault(len(s), []).append(i)
    f1s = []
    for seed in range(rounds):
        rng, perm = random.Random(seed), list(range(len(scores)))
        for idx in by_len.values():
            dealt = rng.sample(idx, len(idx))
            for a, b in zip(idx, dealt):
                perm[a] = b
        f1s.append(calibrated_f1([scores[perm[i]] for i in range(len(scores))], labels)["f1"])
    return {"rounds": rounds, "mean_f1": sum(f1s) / rounds, "max_f1": max(f1s)}


def min_score_auc(scores, labels) -> float:
    """Solution level: the chance that an erroneous solution's lowest step score is below a correct
    one's (ties count half); 0.5 is no signal."""
    err = [min(s) for s, y in zip(scores, labels) if y != -1]
    ok = [min(s) for s, y in zip(scores, labels) if y == -1]
    return sum((a < b) + 0.5 * (a == b) for a in err for b in ok) / max(len(err) * len(ok), 1)


def report_scores(trained, labels, out: Path) -> dict:
    (out / "scores.json").write_text(json.dumps({"labels": labels, "step_scores": trained}))
    best_t = max(GRID, key=lambda t: f1_at(trained, labels, t)["f1"])
    return {"trained_f1@0.5": f1_at(trained, labels, 0.5),
            "trained_f1@threshold_from_other_half": calibrated_f1(trained, labels),
            "chance_f1@threshold_from_other_half (scores shuffled)": shuffled_f1(trained, labels),
            "solution_auc_min_step_score": min_score_auc(trained, labels),
            "trained_best_threshold (upper bound)": {"threshold": best_t, **f1_at(trained, labels, best_t)}}


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
    ap.add_argument("--trained", default=None, help="re-score the PRM this script trained into this folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pb = load_processbench(DATA / "processbench/gsm8k.json", args.pb_limit)
    labels = [r["label"] for r in pb]
    if args.trained:
        prm, tok = load_prm(args.trained)
        trained = score(PRMScorer(prm, tok, batch_size=8, max_length=1024), pb)
        report = {"processbench_split": "gsm8k", "samples": len(pb), "prm": args.trained,
                  "trivial_baseline_f1": baseline_f1(labels), **report_scores(trained, labels, Path(args.trained)),
                  "seconds": time.perf_counter() - t0}
        (Path(args.trained) / "report_rescored.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
        return
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
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = {
        "processbench_split": "gsm8k", "samples": len(pb), "prm800k_rows": args.rows, "train_steps": args.steps,
        "trainable_layers": args.train_layers, "train_loss_last": res.get("loss"),
        "trivial_baseline_f1": baseline_f1(labels),
        "untrained_head_f1@0.5": f1_at(untrained, labels, 0.5),
        **report_scores(trained, labels, Path(args.out)),
        "seconds": {"untrained_scoring": t1 - t0, "training": t2 - t1, "total": time.perf_counter() - t0},
    }
    (Path(args.out) / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
