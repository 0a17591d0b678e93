"""Decode throughput of the HF rollout engine on SmolLM2-135M-Instruct, three forward paths: the
Hugging Face forward with transformers' `sdpa` attention, the same with `posttrain_sdpa` (grouped KV
heads handed to SDPA, no per-head copy), and the lean decoder (`posttrain.models.fast`: fused
projections, preallocated KV cache). Same prompts, same seeded samples, one process, alternating.

    python benchmarks/decode_smollm2.py --prompts 16 --n 2 --max-new-tokens 120
    python benchmarks/decode_smollm2.py --impls posttrain_sdpa,lean --prompts 16 --n 4 --max-new-tokens 200 --threads 2
    python benchmarks/decode_smollm2.py --model tiny-llama:d=64,l=2,h=4 --impls posttrain_sdpa,lean --n 8 --max-new-tokens 16 --rounds 5

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
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--impls", default="sdpa,posttrain_sdpa,lean", help="comma list of sdpa, posttrain_sdpa, lean")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer(args.model)
    prompts = [encode_prompt(tok, [{"role": "user", "content": QUESTION[: 40 + 5 * i]}]) for i in range(args.prompts)]
    impls = args.impls.split(",")
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    best, tokens = {}, {}
    for _ in range(args.rounds):
        for impl in impls:
            model.set_attn_implementation("posttrain_sdpa" if impl == "lean" else impl)
            engine = HFEngine(model, tok, sequences_per_batch=args.prompts * args.n, lean=impl == "lean")
            t = time.perf_counter()
            out = engine.generate(prompts, params)
            dt = time.perf_counter() - t
            tokens[impl] = [c.token_ids for o in out for c in o]
            rate = sum(map(len, tokens[impl])) / dt
            best[impl] = max(best.get(impl, 0.0), rate)
            print(f"{impl}: {rate:.1f} tokens/s ({dt:.1f} s)", flush=True)
    for impl in impls[1:]:
        print(f"same tokens {impl} / {impls[0]}: {tokens[impl] == tokens[impls[0]]}")
    for impl in impls[1:]:
        print(f"{impl} vs {impls[0]}: {best[impl] / best[impls[0]]:.2f}x")


if __name__ == "__main__":
    main()
