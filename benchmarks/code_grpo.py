"""GRPO with the sandboxed code reward on the built-in code task: SFT a tiny model to a middling held-out
pass rate, then GRPO, and report the held-out pass rate before / after against wall-clock time.

    python benchmarks/code_grpo.py                          # task:code (level 2, constants up to 20)
    python benchmarks/code_grpo.py --init OUT/sft --seed 1  # GRPO again (another seed) from a run's SFT snapshot

The task (`posttrain.tasks.code`): the prompt shows f(0), f(1), f(2) of an integer function, the
completion is the function (``def f(x): return x*3+2``), and the reward runs it against held-out
inputs in the sandbox (`posttrain.rewards.code.code_reward` on the rows' call-based ``input_output``
cases: one sandbox run per program; the rows' HumanEval-style ``test`` holds the same cases, which
``posttrain rl --data task:code --rl.reward code`` runs by record / replay, several runs per program). The
held-out problems are functions never trained on (the split is by function).

The reward here is `code_reward` behind a cache keyed by (completion text, test): a GRPO group of a
peaked policy repeats the same program, and programs over + - * of x are deterministic, so a repeat
scores what its first run scored without another sandbox run (the counts are printed). The pass rate
is that of one greedy completion per held-out problem, scored the same way. The split holds 98 held-out functions, so the 200 held-out rows are 98 distinct
prompts (each greedy answer counts about twice): one problem is 1 point of the rate, and its binomial
noise at 0.3 is about 4.6 points.

Each step logs the train reward and the share of zero-variance groups (no GRPO signal), both averaged
over the steps since the last evaluation. --reward-calls K runs K `code_reward` calls at once (each has
min(8, cpus) sandbox slots): the sandbox (a fresh namespaced process per program) is most of a step.

The SFT phase stops as soon as the held-out pass rate reaches --sft-target (it is not timed against
the budget); the GRPO phase runs for --minutes of wall-clock time (rollouts, sandbox and updates;
the periodic evaluations are not counted), evaluating every --eval-every steps. Its defaults: 32
prompts x 8 samples, Adam at a peak lr of 2e-4 on a cosine schedule to 2e-5 over 420 steps (which
2 torch threads fit in the 10 minutes on a quiet machine: 463-554 s), no KL term. A constant 1e-4
stalls at held-out 0.40-0.45 and ends wherever its last noisy step leaves it; the decay holds the
end of the run, and over 420 steps rather than 350 it keeps the lr high for longer, which is when
the runs climbed past 0.45 (BENCHMARKS.md, "Code GRPO").
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from posttrain.data import encode_prompt
from posttrain.rewards.code import code_reward
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.tasks import load_task_spec
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer
from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer


class CachedCodeReward:
    """`code_reward` (all-or-nothing) on the task's call-based cases (``input_output``: one sandbox run
    per program), each distinct (completion, cases) run once."""

    __name__ = "code_reward"

    def __init__(self, calls: int = 1):
        self.cache: dict[tuple, float | None] = {}
        self.scored = self.runs = 0
        self.calls = calls  # concurrent code_reward calls (each runs its own bounded set of sandbox slots)

    def __call__(self, prompts, completions, input_output, **_columns):
        keys = [(c, t) for c, t in zip(completions, input_output, strict=True)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            chunks = [todo[j::self.calls] for j in range(min(self.calls, len(todo)))]
            with ThreadPoolExecutor(len(chunks)) as ex:
                parts = list(ex.map(lambda ch: code_reward([""] * len(ch), [k[0] for k in ch],
                                                           input_output=[k[1] for k in ch]), chunks))
            for ch, scores in zip(chunks, parts):
                self.cache.update(zip(ch, scores))
        self.scored += len(keys)
        self.runs += len(todo)
        return [self.cache[k] for k in keys]


def pass_rate(model, tokenizer, rows, reward: CachedCodeReward, max_new_tokens: int) -> float:
    """Share of held-out problems whose greedy completion passes its tests in the sandbox."""
    engine = HFEngine(model, tokenizer, sequences_per_batch=256)
    outs = engine.generate([encode_prompt(tokenizer, r["prompt"]) for r in rows],
                           SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    scores = reward([""] * len(rows), [o[0].text for o in outs], [r["input_output"] for r in rows])
    return sum(s == 1.0 for s in scores) / len(rows)


def sft_phase(args, rows, reward) -> tuple:
    cfg = SFTConfig(
        model=ModelConfig(name=args.model),
        data=DataConfig(path=f"task:{args.task}", train_rows=20000, eval_rows=0),
        optim=OptimConfig(lr=args.sft_lr, schedule="constant"),
        train=TrainConfig(out=f"{args.out}/sft", max_steps=100000, progress=False, seed=args.seed, resume=False),
        sft=SFTOptions(sequences_per_step=64, sequences_per_microbatch=64),
    )
    sft = SFTTrainer(cfg)
    print(f"sft: {json.dumps(sft.describe())}", flush=True)
    t0, acc = time.perf_counter(), 0.0
    while acc < args.sft_target and sft.step < args.sft_max_steps:
        for _ in range(args.sft_eval_every):
            loss = sft.train_step()["loss"]
        acc = pass_rate(sft.model, sft.tokenizer, rows, reward, args.max_new_tokens)
        print(f"sft step {sft.step}: loss {loss:.3f}, held-out pass rate {acc:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    seconds = time.perf_counter() - t0
    print(f"sft snapshot: {sft.save()} (reuse it with --init {args.out}/sft)", flush=True)
    return sft.model, sft.tokenizer, acc, sft.step, seconds


def grpo_phase(args, model, tokenizer, rows, reward) -> list[dict]:
    cfg = RLConfig(
        algo=args.algo,
        model=ModelConfig(name=args.model),
        data=DataConfig(path=f"task:{args.rl_task or args.task}", train_rows=20000, eval_rows=0),
        optim=OptimConfig(lr=args.lr, schedule=args.schedule, min_lr_ratio=args.min_lr_ratio),
        train=TrainConfig(out=f"{args.out}/grpo", max_steps=args.grpo_steps, progress=False, seed=args.seed, eval_every=-1,
                          resume=False),
        rl=RLOptions(prompts_per_step=args.prompts_per_step, samples_per_prompt=args.samples_per_prompt,
                     max_new_tokens=args.max_new_tokens, sequences_per_microbatch=256, show_every=0,
                     kl_coef=args.kl_coef, temperature=args.temperature),
    )
    trainer = RLTrainer(cfg, model=model, tokenizer=tokenizer, reward_fns=[(reward, 1.0)])
    curve = [{"step": 0, "seconds": 0.0, "pass_rate": pass_rate(trainer.model, tokenizer, rows, reward, args.max_new_tokens)}]
    print(f"grpo step 0: held-out pass rate {curve[0]['pass_rate']:.3f}", flush=True)
    t0, train_s, runs0, scored0 = time.perf_counter(), 0.0, reward.runs, reward.scored
    window: list[dict] = []  # the steps since the last evaluation
    while train_s < args.minutes * 60 and trainer.step_num < args.grpo_steps:
        ts = time.perf_counter()
        m = trainer.step()
        train_s += time.perf_counter() - ts
        window.append(m)
        if trainer.step_num % args.eval_every == 0:
            runs, scored = reward.runs - runs0, reward.scored - scored0
            acc = pass_rate(trainer.model, tokenizer, rows, reward, args.max_new_tokens)
            mean = lambda k: sum(w.get(k, float("nan")) for w in window) / len(window)  # noqa: E731
            r_mean, zero_var = mean("reward_mean"), mean("zero_variance_group_share")
            window = []
            curve.append({"step": trainer.step_num, "seconds": round(train_s, 1), "pass_rate": acc,
                          "reward_mean": round(r_mean, 3), "zero_variance_group_share": round(zero_var, 3),
                          "sandboxed_completions": runs, "scored_completions": scored})
            print(f"grpo step {trainer.step_num}: held-out pass rate {acc:.3f}, train reward {r_mean:.3f}, "
                  f"zero-variance groups {zero_var:.2f} (means over the last {args.eval_every} steps) "
                  f"({train_s:.0f}s training, {time.perf_counter() - t0:.0f}s with evals; {runs}/{scored} completions "
                  f"run in the sandbox, the rest cached)", flush=True)
    return curve


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="code")
    p.add_argument("--rl-task", default="", help="GRPO's prompts from this task spec instead of --task (e.g. code:max_const=30: "
                   "more training functions; the held-out split is by function, so --task's held-out set stays unseen)")
    p.add_argument("--model", default="tiny-llama:d=128,l=4,h=4")
    p.add_argument("--algo", default="grpo")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--sft-target", type=float, default=0.3)
    p.add_argument("--sft-max-steps", type=int, default=3000)
    p.add_argument("--sft-eval-every", type=int, default=25)
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--lr", type=float, default=2e-4, help="GRPO peak lr (Adam): 5e-4 and up is noise-dominated on this task")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="cosine",
                   help="GRPO lr schedule; cosine decays to --min-lr-ratio x lr over --grpo-steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--grpo-steps", type=int, default=420, help="stop GRPO after this many steps (or --minutes, "
                   "whichever comes first); the cosine schedule spans it")
    p.add_argument("--kl-coef", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--samples-per-prompt", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--eval-rows", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--reward-calls", type=int, default=2, help="concurrent code_reward calls (sandbox slots: this x min(8, cpus))")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2 on a quiet 2-core machine; 1 is faster on a loaded one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_code_grpo")
    p.add_argument("--init", default="", help="start GRPO from this SFT run folder (a previous run's OUT/sft) instead of SFT")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = load_task_spec(args.task).eval_rows(args.eval_rows)
    reward = CachedCodeReward(args.reward_calls)
    t_all = time.perf_counter()
    if args.init:
        from posttrain.models import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(args.init)
        sft_acc, sft_steps, sft_s = None, None, 0.0
    else:
        model, tok, sft_acc, sft_steps, sft_s = sft_phase(args, rows, reward)
    curve = grpo_phase(args, model, tok, rows, reward)
    start, final = curve[0]["pass_rate"], curve[-1]["pass_rate"]
    best = max(c["pass_rate"] for c in curve)
    print(json.dumps({"args": vars(args), "sft_steps": sft_steps, "sft_seconds": round(sft_s), "eval_problems": len(rows),
                      "distinct_eval_functions": len({r["prompt"][0]["content"] for r in rows}), "curve": curve,
                      "wall_seconds": round(time.perf_counter() - t_all)}))
    print(f"held-out pass rate ({len(rows)} problems): {start:.3f} after SFT -> {final:.3f} after {curve[-1]['seconds']:.0f}s of "
          f"{args.algo} (best {best:.3f}); gain {100 * (final - start):+.1f} points; "
          f"total wall time {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
