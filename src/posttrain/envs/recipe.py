"""Imitation then RL in an environment, as one recipe: transcripts of the environment's scripted
player, SFT on them, held-out success, GRPO in the environment, held-out success of each checkpoint.

    from posttrain.envs.recipe import AgentRecipe, run_agent_recipe
    summary = run_agent_recipe(AgentRecipe(env="guess:high=7,max_guesses=3", out="runs/agent"))

Every stage runs through the command line's entry point (`posttrain.cli.main`), as a user types it:
``posttrain data transcripts``, ``posttrain sft``, ``posttrain eval --env``, ``posttrain rl --rl.env``
(a checkpoint every ``eval_every`` steps), ``posttrain eval --env`` of each checkpoint. Used by
``benchmarks/agent_guess.py`` and by the demo's ``agent`` stage. SWEET-RL (Zhou et al. 2025) and ReAct
(Yao et al. 2023) also start agents from collected trajectories; here the trajectories come from a
scripted player in the environment itself (`posttrain.envs.transcripts`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain.cli import main as cli


@dataclass(frozen=True)
class AgentRecipe:
    out: str = "runs/agent"
    env: str = "guess:high=7,max_guesses=3"
    model: str = "tiny-llama:d=64,l=2,h=4"
    rows: int = 300  # games played by the scripted player (the won ones are kept)
    sft_steps: int = 150
    sft_lr: float = 3e-3
    grpo_steps: int = 150
    lr: float = 5e-4
    kl_coef: float = 0.0
    prompts: int = 32  # env seeds per GRPO step
    samples: int = 8  # games per seed (the GRPO group)
    max_turns: int = 4
    max_new_tokens: int = 8
    max_episode_tokens: int = 256
    eval_every: int = 25
    eval_rows: int = 200
    seed: int = 0
    progress: bool = False


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
           "--train.progress", str(args.progress).lower()])
    m = json.loads((out / "results.json").read_text())["metrics"]
    return {"success": m["success_rate"], "turns": m["turns_mean"], "seconds": m["seconds"]}


def train_curve(run: Path) -> list[dict]:
    """Per GRPO step: the train reward (sampled episodes' mean) and the mean turns."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "train_reward": r["reward_mean"], "turns": r.get("env/turns_mean")}
            for r in rows if "reward_mean" in r]


def run_agent_recipe(args: AgentRecipe) -> dict:
    """Run the recipe (module docstring); returns the summary also written to ``out/summary.json``."""
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
                            "--train.progress", str(args.progress).lower(), "--train.overwrite", "true"])
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
                             "--train.progress", str(args.progress).lower(), "--train.overwrite", "true"])
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
