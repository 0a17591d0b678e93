"""SmolLM2-135M-Instruct in the calculator-tool environment, end to end with GRPO, for a few steps.

    python benchmarks/agent_calculator_smollm2.py --out runs/bench_calc_smollm2            # 4 steps
    python benchmarks/agent_calculator_smollm2.py --sft-steps 8 --out runs/bench_calc_sft  # warm start first
    python benchmarks/agent_calculator_smollm2.py --steps 1 --prompts 1 --samples 2 --out /tmp/c   # smoke

With ``--sft-steps N`` the model is first warmed up on the scripted player's games (``posttrain data
transcripts --env calculator --model smollm2-135m-instruct``: the player calls the tool with the
problem's expression, then answers; ``posttrain sft`` on them for N steps of 8 games), and everything
below starts from that SFT model. Without it the instruct model rarely calls the tool in this format.

Runs through the command line as a user types it: `posttrain eval --env calculator` on held-out
seeds (greedy), `posttrain rl --rl.env calculator` (GRPO on episodes: each model turn may call the
``calculator`` tool in the documented ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``
format, the tool's result comes back as an env turn with loss mask 0, a turn without a call is the
final answer and the environment's ``reward()`` scores it), then the same evaluation of the trained
policy. Prints, per GRPO step, the reward, turns, policy and env tokens, tool calls, tool errors and
malformed calls, rollout and update seconds; and the evaluations' success, turns and tool-error rate.
It is a run-through of a real model in the agent loop, not a claim of improvement: a few steps of
a 135M model cannot move much.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def posttrain(argv: list[str], log: Path, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    with log.open("a") as f:
        rc = subprocess.call([sys.executable, "-m", "posttrain", *argv], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if rc:
        raise SystemExit(f"posttrain {argv[0]} failed (exit {rc}); see {log}")
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench_calc_smollm2")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=4, help="environment seeds per step")
    ap.add_argument("--samples", type=int, default=4, help="episodes per seed (the GRPO group)")
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--eval-rows", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-6)
    ap.add_argument("--sft-steps", type=int, default=0, help="0: no warm start; N: SFT on transcripts first")
    ap.add_argument("--sft-rows", type=int, default=64, help="scripted games played for the warm start")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "stages.log"
    episode = ["--episode.max_turns", str(args.max_turns), "--episode.max_episode_tokens", str(args.max_turns * (args.max_new_tokens + 64))]
    ev = ["eval", "--env", "calculator", "--data.limit", str(args.eval_rows), "--sampling.n", "0",
          "--sampling.max_new_tokens", str(args.max_new_tokens), "--train.progress", "false", *episode]
    model, seconds = "smollm2-135m-instruct", {}
    if args.sft_steps:
        seconds["transcripts"] = posttrain(["data", "transcripts", "--env", "calculator", "--rows", str(args.sft_rows),
                                            "--model", model, "--transcripts.max_turns", str(args.max_turns),
                                            "--out", str(out / "transcripts"), "--overwrite", "true"], log, args.threads)
        seconds["sft"] = posttrain(["sft", "--model", model, "--data", str(out / "transcripts" / "data.jsonl"),
                                    "--max-steps", str(args.sft_steps), "--lr", "2e-5", "--sft.sequences_per_step", "8",
                                    "--sft.sequences_per_microbatch", "4", "--data.eval_rows", "0", "--train.progress", "false",
                                    "--out", str(out / "sft"), "--train.overwrite", "true"], log, args.threads)
        model = str(out / "sft")
    seconds["eval_before"] = posttrain([*ev, "--model", model, "--out", str(out / "eval_before")], log, args.threads)
    rl_out = out / "grpo"
    seconds["grpo"] = posttrain([
        "rl", "--algo", "grpo", "--model", model, "--rl.env", "calculator",
        "--rl.prompts_per_step", str(args.prompts), "--rl.samples_per_prompt", str(args.samples),
        "--rl.max_turns", str(args.max_turns), "--rl.max_new_tokens", str(args.max_new_tokens),
        "--rl.max_episode_tokens", str(args.max_turns * (args.max_new_tokens + 64)), "--rl.kl_coef", "0",
        "--rl.sequences_per_microbatch", "8", "--optim.lr", str(args.lr), "--train.max_steps", str(args.steps),
        "--data.eval_rows", "0", "--train.progress", "false", "--rl.show_every", "1",
        "--out", str(rl_out), "--train.overwrite", "true",
    ], log, args.threads)
    seconds["eval_after"] = posttrain([*ev, "--model", str(rl_out), "--out", str(out / "eval_after")], log, args.threads)
    report(out, seconds)


def report(out: Path, seconds: dict) -> None:
    steps = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").open()]
    steps = [s for s in steps if "env/reward_mean" in s]
    lines = ["| step | reward | turns | policy tokens | env tokens | tool calls | tool errors | malformed | rollout s | update s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s['step']} | {s['env/reward_mean']:.3f} | {s['env/turns_mean']:.2f} | {s['env/policy_tokens_mean']:.1f} "
                     f"| {s['env/env_tokens_mean']:.1f} | {s['env/tool_calls']} | {s['env/tool_errors']} | {s['env/malformed_calls']} "
                     f"| {s.get('time/rollout_s', 0):.1f} | {s.get('time/update_s', s.get('time/train_s', 0)):.1f} |")
    lines += ["", "| policy | held-out episodes | success | turns | tool-error rate | eval s |", "|---|---|---|---|---|---|"]
    for name in ("before", "after"):
        m = json.loads((out / f"eval_{name}" / "results.json").read_text())["metrics"]
        lines.append(f"| {name} GRPO | {m.get('episodes', m.get('num_rows'))} | {m.get('success_rate', 0):.3f} | {m.get('turns_mean', 0):.2f} "
                     f"| {m.get('tool_error_rate', 0):.3f} | {seconds[f'eval_{name}']:.0f} |")
    lines.append("")
    if "sft" in seconds:
        lines.append(f"warm start: transcripts {seconds['transcripts']:.0f} s, SFT {seconds['sft']:.0f} s")
    lines.append(f"GRPO {seconds['grpo']:.0f} s for {len(steps)} steps")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
