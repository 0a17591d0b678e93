"""SmolLM2-135M-Instruct, offline by its short name: SFT on GSM8K rows with the loss falling.

Loads `smollm2-135m-instruct` (the bundled GGUF, converted once to a cached safetensors folder), maps
GSM8K's `question`/`answer` columns to prompt/completion, runs `--steps` SFT steps (completion-only
loss, packing) and prints the loss of every step; fails unless the mean loss of the last 5 steps is
below the mean of the first 5.

    python benchmarks/sft_smollm2_gsm8k.py                 # 20 steps, 2 sequences/step, max_length 256
    python benchmarks/sft_smollm2_gsm8k.py --steps 8 --batch 8 --micro 4 --threads 2   # the throughput run

Throughput is printed two ways, over all steps and without step 1 (first-touch allocation of the
gradients and AdamW state):
- "MFU (6N)": 6 x parameters x real tokens / time / peak, the usual convention. It counts the LM head
  at every token, so it over-counts the work of a completion-only loss whose head runs at the trained
  tokens only.
- "useful": the matmul FLOPs the update needs, / time / peak: 6 x decoder matmul parameters x real
  tokens + 6 x head parameters x loss tokens + causal attention (6 x layers x heads x head_dim x
  L(L+1) per sequence of L tokens; 3 passes of QK^T and AV). Padding and prompt-position logits are
  not useful work, so they are not counted, whatever a trainer spends on them.
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


def useful_flops(model, lengths: list[int], loss_tokens: int) -> float:
    """Matmul FLOPs one update needs (forward + backward): decoder linears at every real token, the
    LM head at the loss tokens only, causal attention within each sequence (see the module docstring)."""
    import torch

    head = model.get_output_embeddings()
    decoder = model.get_decoder()
    linear = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    attn_width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    attention = sum(6 * cfg.num_hidden_layers * attn_width * L * (L + 1) for L in lengths)
    return 6 * linear * sum(lengths) + 6 * head.weight.numel() * loss_tokens + attention


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=GSM8K)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=2, help="sequences per step")
    p.add_argument("--micro", type=int, default=0, help="sequences per micro-batch (0 = the whole batch)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--full-logits", action="store_true",
                   help="A/B check: force the previous loss path (full forward, logits at every position)")
    p.add_argument("--peak", type=float, default=175e9, help="the machine's fp32 matmul peak, FLOP/s (benchmarks/matmul_rate.py)")
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
    if args.full_logits:
        import posttrain.trainers.sft as sft_module

        sft_module._decoder_and_head = lambda model, rt: None
    drawn: list[list[int]] = []  # the example indices of every step, for the useful-FLOP count
    take = tr.order.take
    tr.order.take = lambda k: drawn.append(take(k)) or drawn[-1]
    print(f"{len(tr.train_examples)} GSM8K rows, {args.batch} sequences/step, max_length {args.max_length}, "
          f"lr {args.lr} cosine, {torch.get_num_threads()} threads"
          f"{', loss path: full forward (--full-logits)' if args.full_logits else ''}")
    losses, t_train, tokens = [], 0.0, 0
    per_step = []  # (seconds, tokens, 6N FLOPs, useful FLOPs)
    for step in range(1, args.steps + 1):
        t = time.perf_counter()
        m = tr.train_step()
        dt = time.perf_counter() - t
        t_train += dt
        tokens += m["tokens"]
        losses.append(m["loss"])
        lengths = [len(tr.train_examples[i]) for i in drawn[-1]]
        assert sum(lengths) == m["tokens"]
        per_step.append((dt, m["tokens"], 6 * n_params * m["tokens"], useful_flops(model, lengths, m["loss_tokens"])))
        print(f"step {step:3d}  loss {m['loss']:.4f}  grad_norm {m['grad_norm']:.3f}  lr {m['lr']:.2e}  "
              f"tokens {m['tokens']:5d}  {dt:.1f}s", flush=True)
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"mean loss first 5 steps {first:.4f} -> last 5 steps {last:.4f}; {tokens / t_train:.0f} tokens/s, "
          f"MFU {6 * n_params * tokens / t_train / 175e9 * 100:.2f}% of 175 GFLOP/s, peak RSS {peak:.0f} MB, "
          f"{t_train:.0f}s training")
    for label, rows in (("all steps", per_step), ("steps 2+", per_step[1:])):
        if not rows:
            continue
        sec, tok, f6, fu = (sum(r[i] for r in rows) for i in range(4))
        print(f"throughput {label:9s}: {tok / sec:6.1f} tokens/s, {sec / len(rows):5.2f} s/step, MFU (6N) {f6 / sec / args.peak * 100:5.1f}%, "
              f"useful {fu / sec / 1e9:5.1f} GFLOP/s = {fu / sec / args.peak * 100:5.1f}% of {args.peak / 1e9:.0f} GFLOP/s "
              f"(useful/6N FLOPs {fu / f6:.3f}); load average {os.getloadavg()[0]:.2f}")
    if not last < first:
        print("FAIL: the loss did not fall", file=sys.stderr)
        return 1
    print("OK: the loss fell")
    return 0


if __name__ == "__main__":
    sys.exit(main())
