"""Curriculum and LIMR selection for GRPO on a built-in task, from a mid-accuracy SFT checkpoint.

    python benchmarks/curriculum_grpo.py --out /tmp/bench_cur            # both parts
    python benchmarks/curriculum_grpo.py --part curriculum --seeds 0 1 2
    python benchmarks/curriculum_grpo.py --part limr --limr-steps 120

One SFT run (seed 0) takes the tiny model to a middling held-out accuracy (--sft-target); every GRPO
run starts from a copy of that checkpoint, on the same pool of --pool training prompts, with the same
settings; only what is compared changes.

- curriculum: for each seed, GRPO with ``--rl.sampler uniform`` and with ``--rl.sampler pass_rate``
  plus the zero-variance gate with refill (--gate; the online curriculum of
  `posttrain.trainers.curriculum`), each for --max-minutes of training. Time to target = training
  wall time (evaluations off the clock) until the mean of the last --smooth held-out evaluations
  first reaches the start accuracy + each of --gains. Reported: each run's time and steps, and the
  median over seeds. --extra-task mixes prompts of another difficulty into the pool and the
  held-out rows (real data sets hold too-easy and too-hard prompts; the plain pool has few).
- limr: GRPO on the whole pool for --limr-steps steps writes RUN/prompt_rewards.jsonl; `posttrain data
  select --select.method limr` (through the CLI) keeps the third of the prompts with the highest
  learning-impact score; GRPO on that third for the same number of steps (same seed, same settings,
  so the same number of rollouts); final held-out accuracy (mean of the last 3 evaluations) of both,
  and of a random third as a control.

The pool and the held-out rows are written as jsonl and read back as files (``--rl.reward exact``), so
the full pool, the LIMR third and the random third go through the same path.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer
from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer


def sft_phase(args):
    cfg = SFTConfig(
        model=ModelConfig(name=args.model),
        data=DataConfig(path=f"task:{args.task}", train_rows=20000, eval_rows=args.eval_rows),
        optim=OptimConfig(lr=3e-3, schedule="constant"),
        train=TrainConfig(out=f"{args.out}/sft", max_steps=100000, progress=False, seed=0, overwrite=True),
        sft=SFTOptions(sequences_per_step=64, sequences_per_microbatch=64, eval_max_new_tokens=args.max_new_tokens),
    )
    sft = SFTTrainer(cfg)
    t0, acc = time.perf_counter(), 0.0
    while acc < args.sft_target and sft.step < 3000:
        for _ in range(25):
            sft.train_step()
        acc = sft.evaluate()["eval/accuracy"]
    print(f"sft: {sft.step} steps, {time.perf_counter() - t0:.0f}s, held-out accuracy {acc:.3f}", flush=True)
    return sft.model, sft.tokenizer, acc


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def grpo(args, model, tok, name: str, data: str, seed: int, curriculum: bool = False, max_steps: int = 100000) -> dict:
    """One GRPO run from a copy of `model`, for `max_steps` or --max-minutes of training: its accuracy curve."""
    cfg = RLConfig(
        algo="grpo", model=ModelConfig(name=args.model),
        data=DataConfig(path=data, eval_path=args.eval_file, train_rows=100000, eval_rows=args.eval_rows),
        optim=OptimConfig(lr=args.lr, schedule="constant"),
        train=TrainConfig(out=f"{args.out}/{name}", max_steps=max_steps, progress=False, seed=seed, eval_every=-1,
                          overwrite=True),
        rl=RLOptions(prompts_per_step=args.prompts_per_step, samples_per_prompt=args.samples_per_prompt,
                     max_new_tokens=args.max_new_tokens, sequences_per_microbatch=256, show_every=0, kl_coef=0.0,
                     reward="exact", sampler="pass_rate" if curriculum else "uniform",
                     dynamic_sampling=curriculum and args.gate, min_reward_spread=args.min_spread if curriculum else 0.0),
    )
    shutil.rmtree(cfg.train.out, ignore_errors=True)  # a fresh run folder (the prompt-reward log appends)
    tr = RLTrainer(cfg, model=copy.deepcopy(model), tokenizer=tok)
    curve = [(0, 0.0, tr.evaluate()["eval/accuracy"])]
    train_s = 0.0
    while tr.step_num < max_steps and train_s < args.max_minutes * 60:
        t = time.perf_counter()
        tr.step()
        train_s += time.perf_counter() - t
        if tr.step_num % args.eval_every == 0:
            curve.append((tr.step_num, round(train_s, 1), tr.evaluate()["eval/accuracy"]))
    tr._prompt_log.close()
    out = {"name": name, "seed": seed, "curriculum": curriculum, "curve": curve, "seconds": round(train_s, 1),
           "steps": tr.step_num}
    print(json.dumps(out), flush=True)
    return out


def crossing(curve, target: float, smooth: int):
    """(step, training seconds) at which the mean of the last `smooth` evaluations first reaches `target`."""
    for i in range(len(curve)):
        window = [a for _, _, a in curve[max(0, i - smooth + 1): i + 1]]
        if i >= smooth - 1 and sum(window) / len(window) >= target:
            return curve[i][0], curve[i][1]
    return None


def curriculum_part(args, model, tok) -> dict:
    start = grpo(args, model, tok, "start", args.pool_file, 0, max_steps=0)["curve"][0][2]  # the checkpoint's accuracy
    print(f"curriculum: start {start:.3f}; targets start + {args.gains} (mean of {args.smooth} evaluations)", flush=True)
    runs = {"uniform": [], "curriculum": []}
    for seed in args.seeds:  # interleaved, so that a change in the machine's load falls on both arms
        for arm in runs:
            runs[arm].append(grpo(args, model, tok, f"cur_{arm}_{seed}", args.pool_file, seed, arm == "curriculum"))
    lim = args.max_minutes * 60
    table = {}
    print("| target | arm | time to target per seed (s) | steps per seed | median time (s) | median steps |")
    print("|---|---|---|---|---|---|")
    for g in args.gains:
        for arm, rs in runs.items():
            hits = [crossing(r["curve"], start + g, args.smooth) for r in rs]
            secs = [h[1] if h else None for h in hits]
            steps = [h[0] if h else None for h in hits]
            # a run that never reached the target counts as its whole budget (so the median is a lower bound)
            med_s = statistics.median(x if x is not None else lim for x in secs)
            med_n = statistics.median(x if x is not None else r["steps"] for x, r in zip(steps, rs))
            table[f"{g}/{arm}"] = {"seconds": secs, "steps": steps, "median_seconds": med_s, "median_steps": med_n}
            print(f"| {start + g:.3f} (+{g}) | {arm} | {secs} | {steps} | {med_s:.1f} | {med_n} |")
    finals = {arm: [statistics.mean(a for _, _, a in r["curve"][-args.smooth:]) for r in rs] for arm, rs in runs.items()}
    print(f"final accuracy (mean of the last {args.smooth} evaluations) per seed: {finals}")
    return {"start": start, "table": table, "finals": finals, "runs": runs}


def limr_part(args, model, tok, pool: list[dict]) -> dict:
    from posttrain.cli import main as cli

    full = grpo(args, model, tok, "limr_full", args.pool_file, 0, max_steps=args.limr_steps)
    sel = Path(args.out) / "limr_select"
    k = len(pool) // 3
    rc = cli(["data", "select", "--data", args.pool_file, "--select.method", "limr", "--select.history",
              f"{args.out}/limr_full/prompt_rewards.jsonl", "--select.n", str(k), "--select.limr_threshold", "-1000",
              "--out", str(sel), "--overwrite", "true"])
    assert rc == 0, "posttrain data select failed"
    third = str(sel / "data.jsonl")
    n_sel = sum(1 for _ in open(third))
    rand = write_rows(Path(args.out) / "random_third.jsonl", random.Random(0).sample(pool, n_sel))
    limr = grpo(args, model, tok, "limr_third", third, 0, max_steps=args.limr_steps)
    ctrl = grpo(args, model, tok, "random_third", rand, 0, max_steps=args.limr_steps)

    def final(r):
        return statistics.mean(a for _, _, a in r["curve"][-3:])

    res = {"prompts_full": len(pool), "prompts_selected": n_sel, "steps": args.limr_steps,
           "final_full": final(full), "final_limr_third": final(limr), "final_random_third": final(ctrl)}
    print("| prompts | GRPO steps | final held-out accuracy (mean of last 3 evals) |")
    print("|---|---|---|")
    print(f"| full pool ({len(pool)}) | {args.limr_steps} | {res['final_full']:.3f} |")
    print(f"| LIMR third ({n_sel}) | {args.limr_steps} | {res['final_limr_third']:.3f} |")
    print(f"| random third ({n_sel}) | {args.limr_steps} | {res['final_random_third']:.3f} |")
    print(f"LIMR third - full: {100 * (res['final_limr_third'] - res['final_full']):+.1f} points")
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["both", "curriculum", "limr"], default="both")
    p.add_argument("--task", default="addition:digits=2")
    p.add_argument("--extra-task", default="", help="a second task whose prompts are mixed into the pool (e.g. addition:digits=4)")
    p.add_argument("--extra-share", type=float, default=0.5, help="share of the pool (and of the held-out rows) from --extra-task")
    p.add_argument("--model", default="tiny-llama:d=64,l=2,h=4")
    p.add_argument("--pool", type=int, default=512, help="training prompts (the RL rows of the task)")
    p.add_argument("--sft-target", type=float, default=0.35)
    p.add_argument("--gains", type=float, nargs="+", default=[0.04, 0.06, 0.08], help="curriculum targets: start accuracy + gain")
    p.add_argument("--smooth", type=int, default=3, help="a target is reached when the mean of this many evaluations reaches it")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limr-steps", type=int, default=120)
    p.add_argument("--max-minutes", type=float, default=4.0, help="training budget per run")
    p.add_argument("--gate", type=int, default=1, help="curriculum arm: also the zero-variance gate with refill (1) or the sampler alone (0)")
    p.add_argument("--min-spread", type=float, default=0.01, help="curriculum arm: zero-variance gate tolerance (rl.min_reward_spread)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--samples-per-prompt", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--eval-rows", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_curriculum")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from posttrain.tasks import load_task_spec

    Path(args.out).mkdir(parents=True, exist_ok=True)
    task = load_task_spec(args.task)
    n_extra = round(args.pool * args.extra_share) if args.extra_task else 0
    pool, held = task.rl_rows(args.pool - n_extra), task.eval_rows(args.eval_rows - round(args.eval_rows * args.extra_share) if n_extra else args.eval_rows)
    if n_extra:  # prompts of another difficulty mixed in (and into the held-out rows, in the same share)
        extra = load_task_spec(args.extra_task)
        pool += extra.rl_rows(n_extra)
        held += extra.eval_rows(args.eval_rows - len(held))
        random.Random(0).shuffle(pool)
    args.pool_file = write_rows(Path(args.out) / "pool.jsonl", pool)
    args.eval_file = write_rows(Path(args.out) / "eval.jsonl", held)
    model, tok, sft_acc = sft_phase(args)
    result = {"task": args.task, "extra_task": args.extra_task, "extra_share": args.extra_share if args.extra_task else 0,
              "model": args.model, "pool": args.pool, "sft_accuracy": sft_acc, "args": vars(args)}
    if args.part in ("both", "curriculum"):
        result["curriculum"] = curriculum_part(args, model, tok)
    if args.part in ("both", "limr"):
        result["limr"] = limr_part(args, model, tok, pool)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
