"""Test-time scaling on the built-in addition task (scratchpad: one column step per line).

1. SFT a tiny Llama (from config, ~1M parameters) on `addition:scratchpad=1`, checking greedy
   accuracy on held-out problems every few steps and stopping once it is mediocre (>= --target-acc),
   so that there is room for test-time compute to help.
2. `posttrain prm`: a PRM initialised from that policy, trained on steps labelled automatically
   (Math-Shepherd: rollouts from each step prefix by the same policy, label = share correct).
3. `posttrain.eval.scaling.scaling_table`: greedy vs maj@k vs PRM best-of-k vs PRM-weighted vote vs
   PRM beam search on held-out problems, accuracy and generated tokens, plus a PNG.

    python benchmarks/scaling_task.py --out runs/bench_scaling

Stages are cached in --out (delete a stage's folder to redo it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from posttrain.checkpoint import latest_checkpoint
from posttrain.cli import main as cli_main
from posttrain.eval.scaling import scaling_markdown, scaling_table
from posttrain.models import load_model_and_tokenizer
from posttrain.models.prm import PRMScorer, load_prm
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig, exact_match_eval
from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer

TASK = "addition:scratchpad=1"


def sft_policy(out: Path, args) -> Path:
    done = latest_checkpoint(out / "sft")
    if done is not None:
        return done
    cfg = SFTConfig(
        model=ModelConfig(name=args.policy_model),
        data=DataConfig(path=f"task:{TASK}", train_rows=4000, eval_rows=60),
        optim=OptimConfig(lr=3e-3, warmup_steps=10, schedule="constant"),
        train=TrainConfig(out=str(out / "sft"), max_steps=args.max_sft_steps, progress=False),
        sft=SFTOptions(sequences_per_step=32, sequences_per_microbatch=32, eval_max_new_tokens=64),
    )
    tr = SFTTrainer(cfg)
    acc = 0.0
    while tr.step < args.max_sft_steps:
        m = tr.train_step()
        if tr.step % args.eval_every == 0:
            acc = exact_match_eval(tr.model, tr.tokenizer, tr.eval_examples, tr.verify, 48)["accuracy"]
            print(f"sft step {tr.step}: loss {m['loss']:.3f} greedy acc {acc:.2f}", flush=True)
            if acc >= args.target_acc:
                break
    path = tr.save()
    (out / "sft" / "summary.json").write_text(json.dumps({"steps": tr.step, "greedy_acc_100": acc}))
    return path


def train_prm(out: Path, policy: Path, args) -> Path:
    if latest_checkpoint(out / "prm") is None:
        rc = cli_main([
            "prm", "--model", str(policy), "--prm.policy", str(policy), "--data", f"task:{TASK}",
            "--out", str(out / "prm"), "--max-steps", str(args.prm_steps), "--lr", str(args.prm_lr),
            "--optim.warmup_steps", "20", "--prm.label_problems", str(args.label_problems),
            "--prm.solutions_per_problem", str(args.solutions), "--prm.rollouts_per_step", str(args.rollouts), "--prm.labels", args.labels, "--prm.label_max_new_tokens", "48",
            "--prm.sequences_per_step", "32", "--prm.sequences_per_microbatch", "32", "--train.progress", "false",
        ])
        if rc:
            raise SystemExit(f"posttrain prm failed ({rc})")
    return out / "prm"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_scaling")
    ap.add_argument("--policy-model", default="tiny-llama:d=64,l=2,h=4")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-sft-steps", type=int, default=400)
    ap.add_argument("--target-acc", type=float, default=0.3)
    ap.add_argument("--prm-steps", type=int, default=600)
    ap.add_argument("--prm-lr", type=float, default=1e-3)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--solutions", type=int, default=4)
    ap.add_argument("--labels", default="soft")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--label-problems", type=int, default=300)
    ap.add_argument("--problems", type=int, default=150)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    policy_path = sft_policy(out, args)
    print(f"policy: {policy_path} ({time.perf_counter() - t0:.0f}s)", flush=True)
    prm_dir = train_prm(out, policy_path, args)
    print(f"prm: {prm_dir} ({time.perf_counter() - t0:.0f}s)", flush=True)
    model, tok = load_model_and_tokenizer(str(policy_path))
    prm, prm_tok = load_prm(prm_dir)
    rows, png = scaling_table(model, tok, PRMScorer(prm, prm_tok, batch_size=64), TASK, args.problems,
                              out_dir=out / "scaling", ks=tuple(args.k), beams=((2, 2), (4, 4)), max_new_tokens=48, temperature=args.temperature, seed=0)
    print(scaling_markdown(rows))
    print(f"plot: {png}; total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
