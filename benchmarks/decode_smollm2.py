"""Decode throughput of the HF rollout engine on SmolLM2-135M-Instruct: transformers' `sdpa`
attention against `posttrain_sdpa` (grouped KV heads handed to SDPA, no per-head copy), same
prompts, same seeded samples, one process, alternating.

    python benchmarks/decode_smollm2.py --prompts 16 --n 2 --max-new-tokens 120

Prompts are prefixes of different lengths of one GSM8K question, so the batch is left-padded (the
case where transformers copies the KV cache per query head). Prints tokens/s per implementation,
whether both produced the same tokens, and the ratio last.
"""
from __future__ import annotations

import argparse
import time

import torch

from posttrain.data import encode_prompt
from posttrain.models import load_model_and_tokenizer
from posttrain.rollout import HFEngine, SamplingParams

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    prompts = [encode_prompt(tok, [{"role": "user", "content": QUESTION[: 40 + 5 * i]}]) for i in range(args.prompts)]
    engine = HFEngine(model, tok, sequences_per_batch=args.prompts * args.n)
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    best, tokens = {}, {}
    for _ in range(args.rounds):
        for impl in ("sdpa", "posttrain_sdpa"):
            model.set_attn_implementation(impl)
            t = time.perf_counter()
            out = engine.generate(prompts, params)
            dt = time.perf_counter() - t
            tokens[impl] = [c.token_ids for o in out for c in o]
            rate = sum(map(len, tokens[impl])) / dt
            best[impl] = max(best.get(impl, 0.0), rate)
            print(f"{impl}: {rate:.1f} tokens/s ({dt:.1f} s)", flush=True)
    print(f"same tokens: {tokens['sdpa'] == tokens['posttrain_sdpa']}")
    print(f"posttrain_sdpa vs sdpa: {best['posttrain_sdpa'] / best['sdpa']:.2f}x")


if __name__ == "__main__":
    main()
