"""SmolLM2-135M-Instruct, offline by its short name: SFT on GSM8K rows with the loss falling.

Loads `smollm2-135m-instruct` (the bundled GGUF, converted once to a cached safetensors folder), maps
GSM8K's `question`/`answer` columns to prompt/completion, runs `--steps` SFT steps (completion-only
loss, packing) and prints the loss of every step; fails unless the mean loss of the last 5 steps is
below the mean of the first 5.

    python benchmarks/sft_smollm2_gsm8k.py                 # 20 steps, 2 sequences/step, max_length 256
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

GSM8K = "../shared/data/gsm8k/train.jsonl"  # run from the repository root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=GSM8K)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=2, help="sequences per step")
    p.add_argument("--micro", type=int, default=0, help="sequences per micro-batch (0 = the whole batch)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from posttrain.models import load_model_and_tokenizer
    from posttrain.trainers.common import DataConfig, OptimConfig, TrainConfig
    from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer

    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    n_params = sum(q.numel() for q in model.parameters())
    print(f"loaded smollm2-135m-instruct offline ({n_params / 1e6:.1f}M params) in {time.perf_counter() - t0:.1f}s")
    cfg = SFTConfig(
        data=DataConfig(path=args.data, columns={"question": "prompt", "answer": "completion"},
                        train_rows=args.steps * args.batch, max_length=args.max_length),
        optim=OptimConfig(lr=args.lr, schedule="cosine", min_lr_ratio=0.1, max_grad_norm=1.0),
        train=TrainConfig(out=tempfile.mkdtemp(prefix="sft-smollm2-"), max_steps=args.steps, loggers=(), progress=False),
        sft=SFTOptions(sequences_per_step=args.batch, sequences_per_microbatch=args.micro or args.batch),
    )
    tr = SFTTrainer(cfg, model=model, tokenizer=tok)
    print(f"{len(tr.train_examples)} GSM8K rows, {args.batch} sequences/step, max_length {args.max_length}, "
          f"lr {args.lr} cosine, {torch.get_num_threads()} threads")
    losses, t_train, tokens = [], 0.0, 0
    for step in range(1, args.steps + 1):
        t = time.perf_counter()
        m = tr.train_step()
        dt = time.perf_counter() - t
        t_train += dt
        tokens += m["tokens"]
        losses.append(m["loss"])
        print(f"step {step:3d}  loss {m['loss']:.4f}  grad_norm {m['grad_norm']:.3f}  lr {m['lr']:.2e}  "
              f"tokens {m['tokens']:5d}  {dt:.1f}s", flush=True)
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"mean loss first 5 steps {first:.4f} -> last 5 steps {last:.4f}; {tokens / t_train:.0f} tokens/s, "
          f"MFU {6 * n_params * tokens / t_train / 175e9 * 100:.2f}% of 175 GFLOP/s, peak RSS {peak:.0f} MB, "
          f"{t_train:.0f}s training")
    if not last < first:
        print("FAIL: the loss did not fall", file=sys.stderr)
        return 1
    print("OK: the loss fell")
    return 0


if __name__ == "__main__":
    sys.exit(main())
