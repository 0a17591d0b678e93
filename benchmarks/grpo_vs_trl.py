"""GRPO throughput (rollout + update) and peak memory: posttrain vs TRL's GRPOTrainer, side by side.

    python benchmarks/grpo_vs_trl.py                    # tiny-llama d=64 l=2, 16 prompts x 8, 16 new tokens
    python benchmarks/grpo_vs_trl.py --steps 12 --max-new-tokens 32

Identical on both sides: the model (same from-config weights, seed 0), the prompts (the addition
task's RL rows, same order), the group size, the number of prompts per step, max new tokens and
temperature 1.0, the reward (the task's verifier), the loss (GRPO: PPO clip 0.2, per-sequence token
mean = TRL loss_type="grpo", group std scaling, beta = 0 so no reference model), one optimizer step
per rollout batch, AdamW with a constant learning rate, grad-norm clip 1.0, fp32, the same number
of torch threads. Each side runs in its own fresh process (so peak memory is its own), one after
the other. The first --warmup steps are not timed.

Reported: completions/s = sequences generated and trained per second of wall-clock step time;
peak RSS of the process and its growth during training; best of --rounds alternating runs per side.
The speed-up line is printed last.

Time to target accuracy (`--time-to-target`):

    python benchmarks/grpo_vs_trl.py --time-to-target [--target-gain 0.2] [--minutes 10]

Both sides start from the same SFT checkpoint (tiny-llama d=64 l=2 SFT'd on addition:digits=2 for
425 steps at constant lr 3e-3, seed 0: held-out greedy accuracy 0.41; built once and cached in
--out) and run GRPO with the settings of `benchmarks/grpo_task.py` (32 prompts x 8 samples, 8 new
tokens, lr 1e-3, beta 0). Every --eval-every steps the same code (posttrain's `exact_match_eval`,
greedy, 200 held-out problems) measures accuracy; evaluation time is excluded from the clock. The
clock stops at the first evaluation at or above start + --target-gain, or after --minutes.

Whether and when a run crosses the target is noisy (GRPO at lr 1e-3 swings held-out accuracy by
+-8 points between evaluations), so `--seeds K` repeats both sides with K sampling seeds (the
same K for both: TRL's `seed`, posttrain's `train.seed`) and compares the medians; a run that does
not reach the target counts as slower than any that does.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    from posttrain.models import load_model_and_tokenizer
    from posttrain.tasks import load_task_spec

    model, tok = load_model_and_tokenizer(args.model, seed=0)
    task = load_task_spec(args.task)
    rows = task.rl_rows(args.prompts_per_step * (args.steps + 2))
    return model, tok, task, rows


def trl_grpo_config(args, sub: str, max_steps: int, logging_steps: int):
    """TRL's GRPOConfig with the settings both modes share (see the module docstring)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=f"{args.out}/{sub}", per_device_train_batch_size=args.prompts_per_step * args.group,
        gradient_accumulation_steps=1, num_generations=args.group, max_completion_length=args.max_new_tokens,
        temperature=1.0, loss_type="grpo", beta=0.0, epsilon=0.2, scale_rewards="group", num_iterations=1,
        learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=max_steps, use_cpu=True,
        bf16=False, logging_steps=logging_steps, report_to="none", save_strategy="no", shuffle_dataset=False,
        seed=getattr(args, "run_seed", 0),
        dataloader_num_workers=0, disable_tqdm=True,
    )


def _setup_ttt(args):
    """The shared start for --time-to-target: the SFT checkpoint, held-out rows and the evaluator."""
    import torch

    torch.set_num_threads(args.threads)
    from posttrain.models import load_model_and_tokenizer
    from posttrain.tasks import load_task_spec
    from posttrain.trainers.common import DataConfig, exact_match_eval, load_split

    model, tok = load_model_and_tokenizer(args.sft_checkpoint)
    task = load_task_spec(args.task)
    rows = task.rl_rows(args.prompts_per_step * args.max_ttt_steps)
    held_out, _ = load_split(DataConfig(path=f"task:{args.task}", eval_rows=200), "eval")

    def evaluate(m) -> float:
        was = m.training
        m.eval()
        acc = exact_match_eval(m, tok, held_out, task.verify, args.max_new_tokens)["accuracy"]
        m.train(was)
        return acc

    return model, tok, task, rows, evaluate


class _Clock:
    """Wall-clock of training steps only; stops at the first evaluation reaching the target."""

    def __init__(self, args, evaluate, model):
        self.args, self.evaluate, self.model = args, evaluate, model
        self.trained_s, self.curve, self.steps = 0.0, [], 0
        self.start_acc = evaluate(model)
        self.target = self.start_acc + args.target_gain
        self.curve.append((0, 0.0, self.start_acc))
        self.done = False

    def after_step(self, step_s: float) -> bool:
        self.steps += 1
        self.trained_s += step_s
        if self.steps % self.args.eval_every == 0:
            acc = self.evaluate(self.model)
            self.curve.append((self.steps, round(self.trained_s, 1), acc))
            self.done = acc >= self.target
        self.done = self.done or self.trained_s > 60 * self.args.minutes or self.steps >= self.args.max_ttt_steps
        return self.done

    def result(self, name):
        reached = self.curve[-1][2] >= self.target
        return {"name": name, "start": self.start_acc, "target": self.target, "reached": reached,
                "seconds": self.trained_s, "steps": self.steps, "curve": self.curve}


def ttt_posttrain(args, out):
    model, tok, task, rows, evaluate = _setup_ttt(args)
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer

    cfg = RLConfig(
        algo="grpo", model=ModelConfig(name=args.sft_checkpoint),
        data=DataConfig(path=f"task:{args.task}", train_rows=len(rows), eval_rows=0),
        optim=OptimConfig(lr=args.lr, schedule="constant", max_grad_norm=1.0),
        train=TrainConfig(out=f"{args.out}/posttrain-ttt-{args.run_seed}", max_steps=args.max_ttt_steps, progress=False,
                          eval_every=-1, seed=args.run_seed),
        rl=RLOptions(kl_coef=0.0, prompts_per_step=args.prompts_per_step, samples_per_prompt=args.group,
                     max_new_tokens=args.max_new_tokens, temperature=1.0,
                     sequences_per_microbatch=args.prompts_per_step * args.group, show_every=0),
    )
    trainer = RLTrainer(cfg, model=model, tokenizer=tok)
    clock = _Clock(args, evaluate, trainer.model)
    while True:
        t = time.perf_counter()
        trainer.step()
        if clock.after_step(time.perf_counter() - t):
            break
    out.put(clock.result("posttrain"))


def ttt_trl(args, out):
    model, tok, task, rows, evaluate = _setup_ttt(args)
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    def verifier(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(task.verify(t, a)) for t, a in zip(texts, answer)]

    clock = _Clock(args, evaluate, model)

    class Stop(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            control.should_training_stop = clock.after_step(time.perf_counter() - self.t)

    cfg = trl_grpo_config(args, "trl-ttt", args.max_ttt_steps, logging_steps=10)
    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    GRPOTrainer(model=model, reward_funcs=verifier, args=cfg, train_dataset=data, processing_class=tok, callbacks=[Stop()]).train()
    out.put(clock.result(f"TRL {trl.__version__}"))


def sft_start(args) -> str:
    """The SFT checkpoint both sides start from (built once, cached under --out)."""
    from pathlib import Path

    from posttrain.checkpoint import latest_checkpoint

    done = latest_checkpoint(Path(args.out) / "sft-start")
    if done is not None:
        return str(done)
    import torch

    torch.set_num_threads(args.threads)
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer

    cfg = SFTConfig(model=ModelConfig(name=args.model), data=DataConfig(path=f"task:{args.task}", train_rows=20000, eval_rows=200),
                    optim=OptimConfig(lr=3e-3, schedule="constant"),
                    sft=SFTOptions(sequences_per_step=64, sequences_per_microbatch=64, eval_max_new_tokens=8),
                    train=TrainConfig(out=f"{args.out}/sft-start", max_steps=args.sft_steps, progress=False, seed=0))
    tr = SFTTrainer(cfg)
    while tr.step < args.sft_steps:
        tr.train_step()
    return str(tr.save())


def _in_fresh_process(ctx, fn, args) -> dict:
    """Run fn(args, queue) in a new process (its own peak memory) and return what it put."""
    q = ctx.Queue()
    proc = ctx.Process(target=fn, args=(args, q))
    proc.start()
    r = q.get()
    proc.join()
    return r


def _median_time(results) -> float:
    """Median seconds to target over seeds; a run that missed it counts as infinitely slow."""
    times = sorted(r["seconds"] if r["reached"] else float("inf") for r in results)
    return times[(len(times) - 1) // 2]


def time_to_target(args) -> None:
    args.sft_checkpoint = sft_start(args)
    ctx = mp.get_context("spawn")
    results: dict[str, list[dict]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        args.run_seed = seed
        for fn in (ttt_trl, ttt_posttrain):
            r = _in_fresh_process(ctx, fn, args)
            results.setdefault(r["name"], []).append(r)
    print(json.dumps({k: v for k, v in vars(args).items()}))
    for name, rs in results.items():
        for seed, r in enumerate(rs, start=args.first_seed):
            print(f"{name:>12} seed {seed}: accuracy {r['start']:.3f} -> target {r['target']:.3f}: "
                  f"{'reached' if r['reached'] else 'NOT reached'} after {r['steps']} steps, {r['seconds']:.1f} s of training "
                  f"({r['seconds'] / max(r['steps'], 1):.3f} s/step)")
            print(f"{'':>12}  curve (step, training s, accuracy): {r['curve']}")
    (trl_name, trl_rs), (name, ours) = results.items()
    t_trl, t_ours = _median_time(trl_rs), _median_time(ours)
    print(f"median time to target: {trl_name} {t_trl:.1f} s, {name} {t_ours:.1f} s over {args.seeds} seed(s)")
    if t_trl < float("inf") and t_ours < float("inf"):
        print(f"time to target vs TRL: {t_ours / t_trl:.2f}x (speed-up {t_trl / t_ours:.1f}x)")
    else:
        print("time to target vs TRL: not comparable (a side's median run did not reach the target)")


def run_posttrain(args, out):
    model, tok, task, rows = _setup(args)
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer

    cfg = RLConfig(
        algo="grpo",
        model=ModelConfig(name=args.model),
        data=DataConfig(path=f"task:{args.task}", train_rows=len(rows), eval_rows=0),
        optim=OptimConfig(lr=args.lr, schedule="constant", max_grad_norm=1.0),
        train=TrainConfig(out=f"{args.out}/posttrain", max_steps=args.steps, progress=False, eval_every=-1),
        rl=RLOptions(kl_coef=0.0, prompts_per_step=args.prompts_per_step, samples_per_prompt=args.group,
                     max_new_tokens=args.max_new_tokens, temperature=1.0, sequences_per_microbatch=args.prompts_per_step * args.group,
                     show_every=0),
    )
    trainer = RLTrainer(cfg, model=model, tokenizer=tok)
    rss0, times, rewards = _rss_mb(), [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        m = trainer.step()
        times.append(time.perf_counter() - t)
        rewards.append(m["reward_mean"])
    out.put(_result("posttrain", args, times, rss0, rewards))


def run_trl(args, out):
    model, tok, task, rows = _setup(args)
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    def verifier(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(task.verify(t, a)) for t, a in zip(texts, answer)]

    times, rewards = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                rewards.append(logs["reward"])

    cfg = trl_grpo_config(args, "trl", args.steps, logging_steps=1)
    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    trainer = GRPOTrainer(model=model, reward_funcs=verifier, args=cfg, train_dataset=data, processing_class=tok, callbacks=[Timer()])
    rss0 = _rss_mb()
    trainer.train()
    out.put(_result(f"TRL {trl.__version__}", args, times, rss0, rewards))


def _result(name, args, times, rss0, rewards):
    timed = times[args.warmup:]
    n = args.prompts_per_step * args.group
    return {"name": name, "completions_per_s": n * len(timed) / sum(timed), "step_s": sum(timed) / len(timed),
            "peak_rss_mb": _peak_mb(), "rss_growth_mb": _peak_mb() - rss0, "reward_first": rewards[:3], "steps": len(times)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-llama:d=64,l=2,h=4")
    p.add_argument("--task", default="addition:digits=2")
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="alternating runs per side; the best of each is reported")
    p.add_argument("--out", default="runs/bench_grpo_vs_trl")
    p.add_argument("--time-to-target", action="store_true", help="measure time to a held-out accuracy gain instead")
    p.add_argument("--target-gain", type=float, default=0.2)
    p.add_argument("--minutes", type=float, default=10.0, help="training-time limit per side (time-to-target)")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--max-ttt-steps", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=1, help="time-to-target runs per side, one sampling seed each")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--sft-steps", type=int, default=425)
    args = p.parse_args()
    if args.time_to_target:
        if "--prompts-per-step" not in sys.argv:
            args.prompts_per_step = 32
        if "--max-new-tokens" not in sys.argv:
            args.max_new_tokens = 8
        time_to_target(args)
        return
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):  # alternate the sides so that load changes on a shared machine hit both
        for fn in (run_trl, run_posttrain):
            r = _in_fresh_process(ctx, fn, args)
            runs.setdefault(r["name"], []).append(r)
    results = [max(rs, key=lambda r: r["completions_per_s"]) for rs in runs.values()]  # best of rounds per side
    print(json.dumps(vars(args)))
    for name, rs in runs.items():
        print(f"{name}: completions/s per round {[round(r['completions_per_s'], 1) for r in rs]}")
    for r in results:
        print(f"{r['name']:>12}: {r['completions_per_s']:8.1f} completions/s  ({r['step_s']:.3f} s/step over {r['steps'] - args.warmup} "
              f"timed steps)  peak RSS {r['peak_rss_mb']:.0f} MB (+{r['rss_growth_mb']:.0f} MB while training)  "
              f"first rewards {[round(x, 3) for x in r['reward_first']]}")
    trl_r, ours = results
    print(f"peak memory vs TRL: {ours['peak_rss_mb'] / trl_r['peak_rss_mb']:.2f}x")
    print(f"speed-up vs TRL: {ours['completions_per_s'] / trl_r['completions_per_s']:.1f}x")


if __name__ == "__main__":
    main()
