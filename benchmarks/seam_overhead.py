"""What the runtime seam costs a single-process CPU SFT step.

Three timings on the same tiny model and the same batches (one torch thread, fp32):

1. ``seam``: `SFTTrainer.train_step` with ``--runtime.device cpu --runtime.parallel none`` (the
   default path: shard, all-reduces, grad_sync and autocast contexts, all no-ops alone).
2. ``reference``: a plain PyTorch loop doing the same work by hand — the same data order, packed
   micro-batches, forward, fp32 token log-probabilities, token-mean loss over the step's tokens,
   backward, clipping, AdamW and the schedule — with no `Runtime` anywhere.
3. ``seam calls``: the extra calls alone, timed in a tight loop (per step: 1 shard, 3 all_reduce_sum,
   one grad_sync and one autocast context per micro-batch; the `PolicyWorker`'s accumulate / backward /
   step wrappers add a Python call each around the same work).

The two loops alternate in rounds, in ABBA order (so drift on a shared machine hits both), and the median per-step
time of each (and the best round, less sensitive to other load) is reported; overhead = seam / reference - 1.
On a shared machine the round-to-round spread (often +-20%) is far larger than the seam's own calls,
so read the third figure as the cost and the first two as "within noise" unless they agree.

    OMP_NUM_THREADS=1 python benchmarks/seam_overhead.py [--model tiny-llama:d=32,l=2,h=2] [--steps 30] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def build(model_name: str, out: str, micro: int):
    from posttrain.configs import DataConfig, ModelConfig, OptimConfig, RuntimeConfig, SFTConfig, SFTOptions, TrainConfig
    from posttrain.trainers.sft import SFTTrainer

    cfg = SFTConfig(model=ModelConfig(name=model_name), data=DataConfig(path="task:addition", train_rows=512, eval_rows=0),
                    optim=OptimConfig(lr=1e-3), train=TrainConfig(out=out, max_steps=10_000, progress=False),
                    sft=SFTOptions(sequences_per_step=16, sequences_per_microbatch=micro),
                    runtime=RuntimeConfig(device="cpu", parallel="none"))
    return SFTTrainer(cfg)


def reference_step(t) -> float:
    """One step of the plain loop on trainer `t`'s model, optimizer and data (no Runtime)."""
    from posttrain.losses.sft import sft_loss
    from posttrain.ops import aggregate, token_logprobs
    from posttrain.trainers.sft import make_batches

    c = t.cfg
    batch = [t.train_examples[i] for i in t.order.take(c.sft.sequences_per_step)]
    n_loss = sum(sum(e.loss_mask[1:]) for e in batch)
    t.model.train()
    total = 0.0
    for mb in make_batches(batch, c.sft, t.tokenizer.pad_token_id):
        logits = t.model(**mb.model_inputs()).logits
        mask = mb.labels != -100
        nll, _ = sft_loss(token_logprobs(logits, mb.labels), mask)
        aggregate(nll, mask, "token-mean", num_tokens=n_loss).backward()
        total += float(nll.detach().sum())
    torch.nn.utils.clip_grad_norm_(t.model.parameters(), c.optim.max_grad_norm)
    t.opt.step()
    t.sched.step()
    t.opt.zero_grad(set_to_none=True)
    t.step += 1
    return total / n_loss


def seam_calls_per_step(rt, model, n_micro: int, reps: int = 20000) -> float:
    from posttrain.runtime.parallel import grad_sync

    items = list(range(16))
    t0 = time.perf_counter()
    for _ in range(reps):
        rt.shard(items)
        rt.all_reduce_sum(100)
        rt.all_reduce_sum(1.5)
        rt.all_reduce_sum(100)
        for k in range(n_micro):
            with grad_sync(model, rt, sync=k == n_micro - 1), rt.autocast():
                pass
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-llama:d=32,l=2,h=2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--micro", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        seam, ref = build(args.model, f"{d}/seam", args.micro), build(args.model, f"{d}/ref", args.micro)
        for _ in range(3):  # warm-up
            seam.train_step(), reference_step(ref)
        times = {"seam": [], "reference": []}
        loops = {"seam": seam.train_step, "reference": lambda: reference_step(ref)}
        for i in range(args.rounds):  # ABBA order: a slow spell on the machine hits both loops
            for name in (("seam", "reference") if i % 2 == 0 else ("reference", "seam")):
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    loops[name]()
                times[name].append((time.perf_counter() - t0) / args.steps)
        same = torch.allclose(torch.cat([p.flatten() for p in seam.model.parameters()]),
                              torch.cat([p.flatten() for p in ref.model.parameters()]), atol=1e-6)
        n_micro = -(-16 // args.micro)
        calls = seam_calls_per_step(seam.rt, seam.train_model, n_micro)
    s, r = statistics.median(times["seam"]), statistics.median(times["reference"])
    print(f"model {args.model}, 16 sequences/step, {n_micro} micro-batches, 1 thread, {args.rounds} rounds x {args.steps} steps")
    print(f"seam      {1 / s:8.2f} steps/s  ({s * 1e3:.2f} ms/step; rounds {', '.join(f'{x * 1e3:.2f}' for x in times['seam'])})")
    print(f"reference {1 / r:8.2f} steps/s  ({r * 1e3:.2f} ms/step; rounds {', '.join(f'{x * 1e3:.2f}' for x in times['reference'])})")
    sm, rm = min(times["seam"]), min(times["reference"])
    print(f"overhead  {100 * (s / r - 1):+.2f}% (median step time), {100 * (sm / rm - 1):+.2f}% (best round); the seam's extra calls alone: {calls * 1e6:.1f} us/step = "
          f"{100 * calls / r:.3f}% of a step")
    print(f"same parameters after {seam.step} steps: {same}")


if __name__ == "__main__":
    main()
