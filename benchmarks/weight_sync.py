"""Weight sync to Ray rollout workers: milliseconds per `RayRolloutPool.update_weights` for each transport.

    python benchmarks/weight_sync.py                      # ~100M-parameter from-config Llama, 2 workers
    python benchmarks/weight_sync.py --model smollm2-135m-instruct --syncs 5

One pool per transport, the same model, workers and sync count, side by side in one run:
- ``object_store``: the full model (HF names) put into Ray's object store once, loaded by every worker;
- ``shared_memory``: the full model written into one /dev/shm file, copied out by every worker;
- ``adapter``: the same model with a LoRA adapter (``--lora-rank``, the default ``model.lora_targets``);
  only its lora_A / lora_B tensors travel, each worker merges them into its copy;
- ``collective``: the full model packed into flat per-dtype buckets and broadcast over a gloo group of
  the driver and the workers (on GPU workers the same code runs NCCL).
Before each sync the weights change (a small in-place add), so no sync is a no-op. Reported per
transport: the median and min wall time of `update_weights` in the driver over ``--syncs`` syncs (the
first sync, which allocates the shared-memory file, is a warm-up and not counted), the median seconds
inside the workers' weight loading (`worker_stats()["sync_s"]`, max over workers), and the bytes
moved per sync. Every sync's result is checked once at the end: the workers' greedy tokens equal the
in-process engine's. The machine is shared: compare the transports of one run, not runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def build(name: str, lora_rank: int, seed: int = 0):
    from posttrain.configs import ModelConfig
    from posttrain.models import load_model_and_tokenizer
    from posttrain.runtime.worker import apply_lora

    model, tok = load_model_and_tokenizer(name, seed=seed)
    if lora_rank:
        model = apply_lora(model, ModelConfig(lora_rank=lora_rank))
    return model, tok


def nudge(model, step: int, lora: bool) -> None:
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if not lora or "lora_" in n:
                p.add_(1e-4 * (step + 1))


def run(args, transport: str) -> dict:
    import torch

    from posttrain.rollout import HFEngine, PolicyWeights, SamplingParams
    from posttrain.rollout.ray_pool import RayRolloutPool

    lora = transport == "adapter"
    model, tok = build(args.model, args.lora_rank if lora else 0)
    params = sum(p.numel() for p in model.parameters())
    pool = RayRolloutPool(model, tok, workers=args.workers, cpus_per_worker=args.cpus_per_worker, transport=transport,
                          timeout_s=600)
    walls, inside = [], []
    try:
        for i in range(args.syncs + 1):
            nudge(model, i, lora)
            before = pool.worker_stats()["sync_s"]
            t0 = time.perf_counter()
            pool.update_weights(PolicyWeights(model), i + 1)
            wall = time.perf_counter() - t0
            after = pool.worker_stats()["sync_s"]
            if i:  # the first sync is a warm-up
                walls.append(wall)
                inside.append(max(b - a for a, b in zip(before, after)))
        prompt = [tok("12+34=", add_special_tokens=False)["input_ids"]]
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=4)
        with torch.no_grad():
            same = pool.generate(prompt, greedy)[0][0].token_ids == HFEngine(model, tok).generate(prompt, greedy)[0][0].token_ids
        return {"transport": transport, "params": params, "mb_per_sync": pool.last_sync_bytes / 2**20,
                "ms_median": 1e3 * statistics.median(walls), "ms_min": 1e3 * min(walls),
                "worker_ms_median": 1e3 * statistics.median(inside), "greedy_same": same}
    finally:
        pool.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-llama:d=768,l=11,h=12", help="any --model; the default has ~100M parameters")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--syncs", type=int, default=5, help="timed syncs per transport (after one warm-up)")
    ap.add_argument("--lora-rank", type=int, default=16, help="the adapter transport's LoRA rank")
    ap.add_argument("--transports", nargs="+", default=["object_store", "shared_memory", "adapter", "collective"])
    ap.add_argument("--json", default="", help="also write the rows to this file")
    args = ap.parse_args()

    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=max(2, int(args.workers * args.cpus_per_worker)), include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for transport in args.transports:
            rows.append(run(args, transport))
            r = rows[-1]
            print(f"{r['transport']:>13}: {r['ms_median']:8.1f} ms/sync median (min {r['ms_min']:.1f}; inside a worker "
                  f"{r['worker_ms_median']:.1f}), {r['mb_per_sync']:.1f} MB/sync, {r['params'] / 1e6:.1f}M params, "
                  f"greedy tokens as in-process: {r['greedy_same']}", flush=True)
    finally:
        ray.shutdown()
    base = next((r for r in rows if r["transport"] == "object_store"), None)
    if base:
        for r in rows:
            print(f"{r['transport']:>13}: {base['ms_median'] / r['ms_median']:.2f}x object_store's speed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
