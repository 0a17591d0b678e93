"""The demo's GRPO stage from a given SFT checkpoint, over learning rates and warm-up lengths.

    python benchmarks/demo_rl_recipe.py --model runs/demo/sft/checkpoints/step-0000700 \\
        --runs 2e-4:0,2e-4:10,1e-4:10 --steps 30

Each run is `posttrain demo`'s RL stage (GRPO, 16 prompts x 8 samples, 64 new tokens, the task's
verifier as reward, kl 0.04 to the start, constant lr after a linear warm-up) from the same
checkpoint, in its own process, with `rl.lean_decoder` / `rl.share_prompts` on or off (`--slow`).
Prints held-out greedy exact match before and after, and the training reward per step.

`--random-sign 2e-4` instead moves every weight of the checkpoint by +-2e-4 (random signs, the size
of Adam's first step at that lr) and prints the held-out accuracy: the control for "the first step
is too large in any direction".
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp


def _run(args, lr: float, warmup: int, out) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from posttrain.models import load_model_and_tokenizer
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.rl import RLConfig, RLOptions, run_rl_stage

    model, tok = load_model_and_tokenizer(args.model)
    cfg = RLConfig(
        algo="grpo", model=ModelConfig(name=args.model),
        data=DataConfig(path=f"task:{args.task}", train_rows=2000, eval_rows=200),
        optim=OptimConfig(lr=lr, schedule="constant", warmup_steps=warmup),
        train=TrainConfig(out=f"{args.out}/lr{lr}_w{warmup}", max_steps=args.steps, seed=0, progress=False),
        rl=RLOptions(prompts_per_step=16, samples_per_prompt=8, max_new_tokens=64, show_every=0,
                     lean_decoder=not args.slow, share_prompts=not args.slow),
    )
    r = run_rl_stage(model, tok, cfg)
    rewards = [round(x, 3) for x in r.get("curves", {}).get("reward_mean", [])]
    out.put({"lr": lr, "warmup": warmup, "before": r.get("eval_before"), "after": r.get("eval_after"), "rewards": rewards})


def random_sign(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from posttrain.models import load_model_and_tokenizer
    from posttrain.tasks import load_task_spec
    from posttrain.trainers.common import DataConfig, exact_match_eval, load_split

    task = load_task_spec(args.task)
    rows, _ = load_split(DataConfig(path=f"task:{args.task}", eval_rows=200), "eval")
    model, tok = load_model_and_tokenizer(args.model)
    before = exact_match_eval(model, tok, rows, task.verify, 64)["accuracy"]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(args.random_sign * (torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1))
    after = exact_match_eval(model, tok, rows, task.verify, 64)["accuracy"]
    print(json.dumps({"random_sign": args.random_sign, "before": before, "after": after}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="an SFT checkpoint of the demo (runs/demo/sft/checkpoints/step-...)")
    p.add_argument("--task", default="addition:scratchpad=2")
    p.add_argument("--runs", default="2e-4:0,1e-4:10", help="comma list of LR:WARMUP_STEPS")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--slow", action="store_true", help="lean decoder and shared prompts off")
    p.add_argument("--out", default="runs/bench_demo_rl")
    p.add_argument("--random-sign", type=float, default=0.0, help="only the random-sign control (see the docstring)")
    args = p.parse_args()
    if args.random_sign:
        random_sign(args)
        return
    ctx = mp.get_context("spawn")
    for spec in args.runs.split(","):
        lr, _, warmup = spec.partition(":")
        q = ctx.Queue()
        proc = ctx.Process(target=_run, args=(args, float(lr), int(warmup or 0), q))
        proc.start()
        r = q.get()
        proc.join()
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
