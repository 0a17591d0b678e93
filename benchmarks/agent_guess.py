"""Multi-turn RL from a scripted warm start: SFT a tiny model on transcripts of the guessing game,
then GRPO in the game, and report held-out success before and after (and the curve in between).

    python benchmarks/agent_guess.py                                   # guess:high=7,max_guesses=3
    python benchmarks/agent_guess.py --grpo-steps 40 --out /tmp/ag     # shorter

Every stage runs through the CLI front door (`posttrain.cli.main`), as a user types it:

1. ``posttrain data transcripts --env ENV --rows 300 --model tiny-llama``: the game's scripted player
   (`GuessEnv.demonstrate`: a uniformly random guess among the numbers still consistent with the
   feedback; wins about 67% of 7-number games in 3 guesses, where bisection always wins) plays
   seeded games; the won ones are kept as ``messages`` rows (`posttrain.envs.transcripts`);
2. ``posttrain sft`` on them for ``--sft-steps`` (a short warm start: the model is far from solved);
3. ``posttrain eval --env ENV`` of the SFT model: greedy episodes on held-out seeds (from 1000 on,
   never trained on) -- the start;
4. ``posttrain rl --rl.env ENV``: GRPO on episodes (a group is ``--samples`` games on one seed; env
   tokens are context with loss mask 0; reward 1 for a win), a checkpoint every ``--eval-every`` steps;
5. ``posttrain eval --env ENV`` of every checkpoint: the held-out success curve.

The aim: GRPO raises held-out greedy success by at least 30 points over the SFT
start, with SFT + GRPO training in under 10 minutes on 2 CPU cores. The player is deliberately not
optimal, so RL has room above imitation. Written into ``--out``: ``summary.json`` (settings, stage
seconds, success before / after) and ``curve.json`` (per GRPO step: train reward, i.e. the sampled
success at temperature 1, and held-out greedy success at the checkpoints); a markdown table is printed.
Wall times are those of a shared machine: the load average is printed beside them.

Measured (defaults, 2 loaded CPU cores, load average 3-5.5; runs are deterministic: a rerun with
``--grpo-steps 175`` repeated the first 150 steps exactly): the player wins 73% of the 300 games
(220 kept); SFT 150 steps (30 s) -> 0.580 held-out greedy success; GRPO 150 steps (462 s) -> 0.870
(+29.0 points; curve 0.58, 0.465, 0.71, 0.565, 0.71, 0.84, 0.87 every 25 steps; 175 steps: 0.855).
The aim is just missed: +29 points, from a start above the 20-50% band. SFT is a step function at
this size: 120 and 140 SFT steps give 0.145, and GRPO from there did not lift the train reward in
56 steps (the greedy policy does not yet read the feedback). Figures:
``benchmarks/figures/agent_guess_summary.json`` and ``agent_guess_curve.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from posttrain.cli import main as cli


def stage(argv: list[str]) -> float:
    t0 = time.perf_counter()
    rc = cli(argv)
    if rc:
        raise SystemExit(f"posttrain {' '.join(argv[:2])} failed (exit {rc})")
    return time.perf_counter() - t0


def held_out(args, model: str, out: Path) -> dict:
    """Greedy held-out success of `model` (``posttrain eval --env``)."""
    stage(["eval", "--env", args.env, "--model", model, "--data.limit", str(args.eval_rows), "--sampling.n", "0",
           "--sampling.max_new_tokens", str(args.max_new_tokens), "--episode.max_turns", str(args.max_turns),
           "--episode.max_episode_tokens", str(args.max_episode_tokens), "--train.out", str(out),
           "--train.progress", "false"])
    m = json.loads((out / "results.json").read_text())["metrics"]
    return {"success": m["success_rate"], "turns": m["turns_mean"], "seconds": m["seconds"]}


def train_curve(run: Path) -> list[dict]:
    """Per GRPO step: the train reward (sampled episodes' mean) and the mean turns."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "train_reward": r["reward_mean"], "turns": r.get("env/turns_mean")}
            for r in rows if "reward_mean" in r]


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds, load = {}, {"start": os.getloadavg()}
    seconds["transcripts"] = stage(["data", "transcripts", "--env", args.env, "--rows", str(args.rows), "--model", "tiny-llama",
                                    "--seed", str(args.seed), "--transcripts.max_turns", str(args.max_turns),
                                    "--out", str(out / "transcripts"), "--overwrite", "true"])
    report = json.loads((out / "transcripts" / "report.json").read_text())
    seconds["sft"] = stage(["sft", "--model", args.model, "--data", str(out / "transcripts" / "data.jsonl"),
                            "--out", str(out / "sft"), "--max-steps", str(args.sft_steps), "--lr", str(args.sft_lr),
                            "--sft.sequences_per_step", "32", "--sft.sequences_per_microbatch", "32", "--seed", str(args.seed),
                            "--train.progress", "false", "--train.overwrite", "true"])
    before = held_out(args, str(out / "sft"), out / "eval_sft")
    print(f"SFT ({args.sft_steps} steps, {seconds['sft']:.0f}s): held-out success {before['success']:.3f}", flush=True)
    grpo = out / "grpo"
    seconds["grpo"] = stage(["rl", "--algo", "grpo", "--rl.env", args.env, "--model", str(out / "sft"), "--out", str(grpo),
                             "--max-steps", str(args.grpo_steps), "--lr", str(args.lr), "--rl.kl_coef", str(args.kl_coef),
                             "--rl.prompts_per_step", str(args.prompts), "--rl.samples_per_prompt", str(args.samples),
                             "--rl.max_new_tokens", str(args.max_new_tokens), "--rl.max_turns", str(args.max_turns),
                             "--rl.max_episode_tokens", str(args.max_episode_tokens), "--rl.show_every", "0",
                             "--seed", str(args.seed), "--train.save_every", str(args.eval_every),
                             "--train.keep_checkpoints", str(args.grpo_steps // args.eval_every + 1),
                             "--train.progress", "false", "--train.overwrite", "true"])
    load["after_training"] = os.getloadavg()
    curve = train_curve(grpo)
    evals = {0: before["success"]}
    for ck in sorted((grpo / "checkpoints").glob("step-*")):
        k = int(ck.name.split("-")[1])
        evals[k] = held_out(args, str(ck), out / f"eval_grpo_{k}")["success"]
        print(f"GRPO step {k}: held-out success {evals[k]:.3f}", flush=True)
    for row in curve:
        row["held_out_success"] = evals.get(row["step"])
    after = evals[max(evals)]
    summary = {"env": args.env, "model": args.model, "transcripts": {"rows": args.rows, "kept": report["kept"],
               "player_success": report["success_rate"]}, "sft_steps": args.sft_steps, "grpo_steps": args.grpo_steps,
               "grpo": {"lr": args.lr, "kl_coef": args.kl_coef, "prompts_per_step": args.prompts, "samples_per_prompt": args.samples},
               "eval_rows": args.eval_rows, "success_sft": before["success"], "success_grpo": after,
               "gain_points": round(100 * (after - before["success"]), 1), "held_out_curve": evals,
               "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "training_seconds": round(seconds["sft"] + seconds["grpo"], 1), "load_average": load}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "curve.json").write_text(json.dumps(curve, indent=1))
    return summary


def print_table(s: dict) -> None:
    print(f"\n{s['env']}, {s['model']}; scripted player wins {s['transcripts']['player_success']:.3f} "
          f"({s['transcripts']['kept']} won games of {s['transcripts']['rows']} kept); {s['eval_rows']} held-out seeds, greedy\n")
    print("| stage | steps | held-out success | wall s |")
    print("|---|---|---|---|")
    print(f"| SFT on transcripts | {s['sft_steps']} | {s['success_sft']:.3f} | {s['seconds']['sft']:.0f} |")
    print(f"| + GRPO | {s['grpo_steps']} | {s['success_grpo']:.3f} | {s['seconds']['grpo']:.0f} |")
    print(f"\nGRPO gain: {s['gain_points']:+.1f} points; SFT + GRPO training {s['training_seconds']:.0f}s "
          f"(load average {s['load_average']['start'][0]:.1f} at the start, {s['load_average']['after_training'][0]:.1f} after)")
    print("\n| GRPO step | " + " | ".join(str(k) for k in s["held_out_curve"]) + " |")
    print("|---|" + "---|" * len(s["held_out_curve"]))
    print("| held-out success | " + " | ".join(f"{v:.3f}" for v in s["held_out_curve"].values()) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="guess:high=7,max_guesses=3")
    p.add_argument("--model", default="tiny-llama:d=64,l=2,h=4")
    p.add_argument("--rows", type=int, default=300, help="games played by the scripted player (the won ones are kept)")
    p.add_argument("--sft-steps", type=int, default=150)
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--grpo-steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--kl-coef", type=float, default=0.0)
    p.add_argument("--prompts", type=int, default=32, help="env seeds per GRPO step")
    p.add_argument("--samples", type=int, default=8, help="games per seed (the GRPO group)")
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--max-episode-tokens", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-rows", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_agent_guess")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print_table(run(args))


if __name__ == "__main__":
    main()
