"""One GRPO step with the rollout and training fast paths on and off, side by side.

    python benchmarks/grpo_step_paths.py                              # untrained tiny model, 16 x 8, 16 new tokens
    python benchmarks/grpo_step_paths.py --model /tmp/rlw/ttt/sft-start/checkpoints/step-0000425 \\
        --prompts-per-step 32 --max-new-tokens 8                      # the time-to-target setting

The two switches are `rl.lean_decoder` (rollouts through `posttrain.models.fast.LeanDecoder`) and
`rl.share_prompts` (policy passes run each group's prompt once); both change speed only (tested).
Every configuration runs in a fresh process, the configurations alternate for --rounds rounds, the
first --warmup steps are not timed; printed per configuration: seconds per step and its rollout and
update halves, every round, the best round last. The second checkpoint above is the one
`benchmarks/grpo_vs_trl.py --time-to-target --out /tmp/rlw/ttt` builds.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time

CONFIGS = {"both off": (False, False), "lean decoder": (True, False), "shared prompts": (False, True), "both on": (True, True)}


def _run(args, lean: bool, share: bool, out) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from posttrain.models import load_model_and_tokenizer
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer

    model, tok = load_model_and_tokenizer(args.model, seed=0)
    n = args.prompts_per_step * (args.steps + args.warmup)
    cfg = RLConfig(
        algo="grpo", model=ModelConfig(name=args.model),
        data=DataConfig(path=f"task:{args.task}", train_rows=n, eval_rows=0),
        optim=OptimConfig(lr=1e-3, schedule="constant", max_grad_norm=1.0),
        train=TrainConfig(out=f"{args.out}/{int(lean)}{int(share)}", max_steps=args.steps + args.warmup, progress=False, eval_every=-1),
        rl=RLOptions(kl_coef=0.0, prompts_per_step=args.prompts_per_step, samples_per_prompt=args.group,
                     max_new_tokens=args.max_new_tokens, temperature=1.0,
                     sequences_per_microbatch=args.prompts_per_step * args.group, show_every=0,
                     lean_decoder=lean, share_prompts=share),
    )
    trainer = RLTrainer(cfg, model=model, tokenizer=tok)
    for _ in range(args.warmup):
        trainer.step()
    rollout = update = 0.0
    t = time.perf_counter()
    for _ in range(args.steps):
        m = trainer.step()
        rollout, update = rollout + m["time/rollout_s"], update + m["time/update_s"]
    out.put(((time.perf_counter() - t) / args.steps, rollout / args.steps, update / args.steps))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-llama:d=64,l=2,h=4")
    p.add_argument("--task", default="addition:digits=2")
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", default="both off,both on", help=f"comma list of: {', '.join(CONFIGS)}")
    p.add_argument("--out", default="runs/bench_grpo_step_paths")
    args = p.parse_args()
    names = [c.strip() for c in args.configs.split(",")]
    ctx = mp.get_context("spawn")
    runs: dict[str, list[tuple]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            q = ctx.Queue()
            proc = ctx.Process(target=_run, args=(args, *CONFIGS[name], q))
            proc.start()
            runs[name].append(q.get())
            proc.join()
    for name, rs in runs.items():
        rounds = ", ".join(f"{s:.4f}" for s, _, _ in rs)
        best = min(rs)
        print(f"{name:>15}: s/step per round [{rounds}]; best {best[0]:.4f} (rollout {best[1]:.4f}, update {best[2]:.4f})")
    if len(names) >= 2:
        a, b = min(runs[names[0]])[0], min(runs[names[-1]])[0]
        print(f"{names[-1]} vs {names[0]}: {a / b:.2f}x steps/s")


if __name__ == "__main__":
    main()
