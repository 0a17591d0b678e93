"""DPO throughput and peak memory: posttrain's PreferenceTrainer vs TRL's DPOTrainer, side by side.

    python benchmarks/dpo_vs_trl.py [--model tiny-llama] [--steps 30] [--pairs 16] [--threads 1]

Each framework runs in its own subprocess (so the RSS high-water mark, `ru_maxrss`, is its own) on
the same model (same seed, same initial weights), the same pairs in the same order (addition-task
preference rows, conversational; TRL's tokenization is checked to give exactly our token ids), the
same batch (pairs per step, no accumulation), the same loss (sigmoid DPO, beta 0.1) and the same
optimizer (AdamW, constant lr, clip 1.0). Timed: trainer construction (tokenization, reference
logps) plus all training steps. TRL runs twice: its default (reference model forward every step)
and `precompute_ref_log_probs=True`. Per-step losses must agree to 1e-4 on the first steps.
Prints one line per run, then `speed-up vs TRL: X.Xx` against the FASTER TRL configuration.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time


def pairs_rows(n: int) -> list[dict]:
    from posttrain.tasks import get_task

    return get_task("addition").preference_rows(n, seed=3)  # what load_pairs generates for task:addition


def run_posttrain(a) -> dict:
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.preference import PreferenceConfig, PreferenceOptions, PreferenceTrainer

    cfg = PreferenceConfig(
        model=ModelConfig(name=a.model), data=DataConfig(path=a.data, train_rows=a.steps * a.pairs, eval_rows=0),
        optim=OptimConfig(lr=a.lr, schedule="constant"), train=TrainConfig(out=a.out + "/posttrain", max_steps=a.steps, progress=False),
        pref=PreferenceOptions(pairs_per_step=a.pairs, pairs_per_microbatch=a.pairs, eval_before=False), loss="dpo", beta=0.1,
    )
    t0 = time.perf_counter()
    tr = PreferenceTrainer(cfg)
    tr.order = SequentialOrder()
    losses = [tr.train_step()["loss"] for _ in range(a.steps)]
    return {"seconds": time.perf_counter() - t0, "losses": losses}


class SequentialOrder:
    """Items 0, 1, 2, ... in file order (TRL is given a sequential sampler too)."""

    def __init__(self):
        self.pos = 0

    def take(self, k: int) -> list[int]:
        self.pos += k
        return list(range(self.pos - k, self.pos))

    def state(self) -> dict:
        return {}


def run_trl(a, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(a.model, seed=0)
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in pairs_rows(a.steps * a.pairs)]
    losses: list[float] = []

    class Recording(DPOTrainer):
        def compute_loss(self, *args, **kw):
            out = super().compute_loss(*args, **kw)
            losses.append(float((out[0] if isinstance(out, tuple) else out).detach()))
            return out

        def _get_train_sampler(self, *args, **kw):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    args = DPOConfig(
        output_dir=a.out + "/trl", per_device_train_batch_size=a.pairs, gradient_accumulation_steps=1, max_steps=a.steps,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=precompute, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True, max_length=None,
    )
    t0 = time.perf_counter()
    ref = None if precompute else copy.deepcopy(model)  # a from-config model has no path TRL could reload
    trainer = Recording(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "losses": losses, "token_ids_match": check_ids(trainer.train_dataset, a, tok)}


def check_ids(ds, a, tok) -> bool:
    from posttrain.data import load_examples
    from posttrain.trainers.pairs import tokenize_pairs

    ours = tokenize_pairs(tok, load_examples(pairs_rows(a.steps * a.pairs), kind="preference")[0], 512)
    return all(o.prompt_ids == list(t["prompt_ids"]) and o.chosen_ids == list(t["chosen_ids"]) and o.rejected_ids == list(t["rejected_ids"])
               for o, t in zip(ours, ds))


def worker(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = run_posttrain(a) if a.worker == "posttrain" else run_trl(a, precompute=a.worker == "trl-precompute")
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["pairs_per_s"] = a.steps * a.pairs / res["seconds"]
    print("RESULT " + json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--data", default="task:addition")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compare-steps", type=int, default=5)
    p.add_argument("--out", default="/tmp/posttrain-dpo-vs-trl")
    p.add_argument("--trl-runs", default="trl,trl-precompute", help="which TRL configurations to run (comma list)")
    p.add_argument("--worker", default="")
    a = p.parse_args()
    if a.worker:
        return worker(a)
    import trl

    print(f"model {a.model}, {a.steps} steps x {a.pairs} pairs, sigmoid DPO beta 0.1, AdamW lr {a.lr} constant, "
          f"{a.threads} thread(s); TRL {trl.__version__}")
    results = {}
    trl_runs = [n for n in a.trl_runs.split(",") if n]
    for name in ("posttrain", *trl_runs):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", name]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(line[7:])
        r = results[name]
        print(f"{name:<15} {r['pairs_per_s']:8.1f} pairs/s  {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB")
    k = a.compare_steps
    ours = results["posttrain"]["losses"][:k]
    for name in trl_runs:
        theirs = results[name]["losses"][:k]
        diff = max(abs(x - y) for x, y in zip(ours, theirs))
        print(f"first {k} step losses, posttrain vs {name}: max |diff| {diff:.2e} ({'agree' if diff <= 1e-4 else 'DISAGREE'} at 1e-4); "
              f"token ids identical: {results[name]['token_ids_match']}")
    print("posttrain losses:", [round(x, 6) for x in ours])
    print(f"{trl_runs[0]} losses:", [round(x, 6) for x in results[trl_runs[0]]["losses"][:k]])
    best = max(trl_runs, key=lambda n: results[n]["pairs_per_s"])
    mem = results["posttrain"]["peak_rss_mb"] / results[best]["peak_rss_mb"]
    print(f"peak memory vs TRL ({best}): {mem:.2f}x")
    print(f"speed-up vs TRL: {results['posttrain']['pairs_per_s'] / results[best]['pairs_per_s']:.1f}x")


if __name__ == "__main__":
    main()
