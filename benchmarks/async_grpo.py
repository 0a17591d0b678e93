"""Synchronous vs asynchronous GRPO with one Ray rollout worker: steps/s, accuracy per step, and what
the off-policy correction prevents.

    python benchmarks/async_grpo.py --out /tmp/bench_async --seeds 0 1 2 --steps 40

One SFT run takes the tiny model to a middling held-out accuracy (as `curriculum_grpo.py`); it is saved
as a folder and every GRPO run starts from it through the CLI, as a user would run it:
``posttrain rl --model FOLDER --rollout.backend ray --rollout.workers 1 --rollout.cpus_per_worker 1``
with the trainer on one torch thread, so the trainer and the rollout worker each have one core.

Modes (same settings, seeds, steps; only these change):
- ``sync``: ``--rl.max_staleness 0``: rollouts and updates take turns, each side idle while the other works;
- ``async1`` / ``async2``: ``--rl.max_staleness 1`` / ``2`` with decoupled PPO (the default correction);
- ``async1-none``: one-step-off without a correction (``--rl.correction none``).

Reported per run: steps/s (completions of a step over the step's wall time, held-out evaluations
excluded), held-out greedy accuracy every --eval-every steps, the final accuracy (mean of the last 3
evaluations), the wall time and steps to the first evaluation at --target (default: the SFT start +
0.15; the periodic evaluations are not counted), the trainer's wait and the worker's idle time per
step, and the median over seeds; the speed-up of each mode over ``sync``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = {"sync": ["--rl.max_staleness", "0"], "async1": ["--rl.max_staleness", "1"],
         "async2": ["--rl.max_staleness", "2"], "async1-none": ["--rl.max_staleness", "1", "--rl.correction", "none"]}


def sft_start(args) -> tuple[Path, float]:
    from curriculum_grpo import sft_phase

    folder = Path(args.out) / "sft-model"
    if (folder / "config.json").exists():
        return folder, json.loads((folder / "start.json").read_text())["accuracy"]
    model, tok, acc = sft_phase(args)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "start.json").write_text(json.dumps({"accuracy": acc}))
    return folder, acc


def run(args, folder: Path, mode: str, seed: int) -> dict:
    from posttrain.cli import main as cli

    out = Path(args.out) / f"{mode}-seed{seed}"
    rc = cli(["rl", "--model", str(folder), "--data", f"task:{args.task}", "--data.train_rows", "2000",
              "--data.eval_rows", str(args.eval_rows), "--lr", str(args.lr), "--max-steps", str(args.steps),
              "--train.seed", str(seed), "--train.eval_every", str(args.eval_every), "--train.progress", "false",
              "--train.overwrite", "true", "--rl.prompts_per_step", str(args.prompts), "--rl.samples_per_prompt", "8",
              "--rl.max_new_tokens", str(args.max_new_tokens), "--rl.show_every", "0",
              "--rollout.backend", "ray", "--rollout.workers", "1", "--rollout.cpus_per_worker", "1",
              *MODES[mode], "--out", str(out)])
    if rc:
        raise SystemExit(f"{mode} seed {seed}: exit {rc}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "completions_per_s" in m]
    n = args.prompts * 8
    step_s = [n / m["completions_per_s"] for m in steps[1:]]  # the first step has nothing prefetched
    curve = [(m["step"], m["eval/accuracy"]) for m in metrics if "eval/accuracy" in m]
    elapsed = {m["step"]: t for m, t in zip(steps, itertools.accumulate(n / m["completions_per_s"] for m in steps))}
    hit = next((s for s, a in curve if a >= args.target), None)  # the first evaluation at the target
    return {"mode": mode, "seed": seed, "steps_per_s": 1 / statistics.mean(step_s), "curve": curve,
            "final": statistics.mean(a for _, a in curve[-3:]),
            "time_to_target_s": elapsed.get(hit, 0.0) if hit is not None else None, "steps_to_target": hit,
            "staleness": statistics.mean(m.get("offpolicy/staleness", 0.0) for m in steps),
            "wait_s": statistics.mean(m.get("time/wait_rollout_s", 0.0) for m in steps[1:]),
            "worker_idle_s": statistics.mean(m.get("time/worker_idle_s", 0.0) for m in steps[1:]),
            "step_s": statistics.mean(step_s)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/bench_async")
    p.add_argument("--model", default="tiny-llama:d=64,l=2,h=4")
    p.add_argument("--task", default="addition:digits=2")
    p.add_argument("--sft-target", type=float, default=0.3)
    p.add_argument("--eval-rows", type=int, default=300)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--target", type=float, default=0.0,
                   help="held-out accuracy for the time-to-target column (0 = the SFT start + 0.15)")
    args = p.parse_args()
    import ray
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # the worker's one core; the trainer has the other
    folder, start = sft_start(args)
    args.target = args.target or round(start + 0.15, 3)
    print(f"start: held-out accuracy {start:.3f} ({folder}); target {args.target:.3f}", flush=True)
    rows = []
    for seed in args.seeds:
        for mode in args.modes:
            t0 = time.perf_counter()
            r = run(args, folder, mode, seed)
            rows.append(r)
            print(f"{mode} seed {seed}: {r['steps_per_s']:.3f} steps/s, final {r['final']:.3f}, staleness {r['staleness']:.2f}, "
                  f"trainer waits {r['wait_s']:.2f} s/step, worker idle {r['worker_idle_s']:.2f} s/step of {r['step_s']:.2f}, "
                  f"target at step {r['steps_to_target']} ({r['time_to_target_s'] or float('nan'):.0f} s), "
                  f"curve {r['curve']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"start": start, "args": vars(args), "runs": rows}, indent=1))
    sync = statistics.median(r["steps_per_s"] for r in rows if r["mode"] == "sync") if any(r["mode"] == "sync" for r in rows) else None
    print(f"\nstart accuracy {start:.3f}; medians over seeds {args.seeds}\n")
    print(f"| mode | steps/s | vs sync | time to {args.target:.3f} (s; steps) | final held-out accuracy | mean staleness "
          "| trainer waits (s/step) | worker idle (s/step) |\n|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        mine = [r for r in rows if r["mode"] == mode]
        sps = statistics.median(r["steps_per_s"] for r in mine)
        finals = ", ".join(f"{r['final']:.3f}" for r in mine)
        ratio = f"{sps / sync:.2f}x" if sync else "-"
        # a seed that never reached the target counts as infinitely slow in the median
        tt = statistics.median(r["time_to_target_s"] if r["time_to_target_s"] is not None else float("inf") for r in mine)
        st = statistics.median(r["steps_to_target"] if r["steps_to_target"] is not None else float("inf") for r in mine)
        print(f"| {mode} | {sps:.3f} | {ratio} | {tt:.0f}; {st} | {statistics.median(r['final'] for r in mine):.3f} (seeds {finals}) "
              f"| {statistics.median(r['staleness'] for r in mine):.2f} | {statistics.median(r['wait_s'] for r in mine):.2f} "
              f"| {statistics.median(r['worker_idle_s'] for r in mine):.2f} |")


if __name__ == "__main__":
    main()
