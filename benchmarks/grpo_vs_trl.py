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
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
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
    from trl import GRPOConfig, GRPOTrainer

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

    n = args.prompts_per_step * args.group
    cfg = GRPOConfig(
        output_dir=f"{args.out}/trl", per_device_train_batch_size=n, gradient_accumulation_steps=1, num_generations=args.group,
        max_completion_length=args.max_new_tokens, temperature=1.0, loss_type="grpo", beta=0.0, epsilon=0.2,
        scale_rewards="group", num_iterations=1, learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=1.0,
        max_steps=args.steps, use_cpu=True, bf16=False, logging_steps=1, report_to="none", save_strategy="no",
        shuffle_dataset=False, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
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
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):  # alternate the sides so that load changes on a shared machine hit both
        for fn in (run_trl, run_posttrain):
            q = ctx.Queue()
            proc = ctx.Process(target=fn, args=(args, q))
            proc.start()
            r = q.get()
            proc.join()
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
