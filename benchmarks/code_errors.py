"""What a model gets wrong on the built-in code task: its greedy answers to the distinct held-out (and
training) functions sorted into right / slope off by k / intercept wrong / both / unreadable, plus the
mean pass rate and pass@n of n samples at T = 1.

    python benchmarks/code_errors.py OUT/sft        # a run folder or snapshot of `benchmarks/code_grpo.py`

An answer is judged by the value of the expression it returns at a few x, each x written in as a
number and the result read by the calculator tool's tree walker (`posttrain.envs.calculator.safe_arithmetic`:
numbers and arithmetic operators only, so nothing the model wrote is executed; anything else is
"unreadable"). The benchmark's figures run programs in the sandbox instead.
"""
from __future__ import annotations

import argparse
import collections
import re

import torch

from posttrain.data import encode_prompt
from posttrain.envs.calculator import safe_arithmetic
from posttrain.models import load_model_and_tokenizer
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.tasks import load_task_spec

PROBE = (0, 1, 2, 5, 17)


def verdict(prompt: str, text: str) -> str:
    """'ok', 'slope +k', 'intercept', 'both' or 'unreadable' for one completion of a linear function."""
    shown = [int(v) for v in re.findall(r"=(-?\d+)", prompt)]
    m = re.fullmatch(r"def f\(x\): return (.+)", text.strip())
    try:
        got = [safe_arithmetic(m.group(1).replace("x", f"({x})")) for x in PROBE] if m else None
    except (ValueError, ZeroDivisionError):
        got = None
    if got is None:
        return "unreadable"
    a, b = shown[1] - shown[0], shown[0]
    ref = [a * x + b for x in PROBE]
    if got == ref:
        return "ok"
    if got[0] == ref[0]:
        return f"slope {got[1] - got[0] - a:+g}"
    return "intercept" if got[1] - got[0] == a else "both"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--task", default="code")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seeds the T = 1 samples")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = load_task_spec(args.task)
    model, tok = load_model_and_tokenizer(args.model)
    engine = HFEngine(model, tok, sequences_per_batch=256)
    for split, rows in (("held-out", spec.eval_rows(200)), ("train", spec.rl_rows(200))):
        rows = list({r["prompt"][0]["content"]: r for r in rows}.values())  # distinct functions
        prompts = [encode_prompt(tok, r["prompt"]) for r in rows]
        texts = [r["prompt"][0]["content"] for r in rows]
        greedy = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=40))
        kinds = collections.Counter(verdict(t, o[0].text) for t, o in zip(texts, greedy))
        sampled = engine.generate(prompts, SamplingParams(n=args.samples, temperature=1.0, max_new_tokens=40))
        right = [[verdict(t, s.text) == "ok" for s in o] for t, o in zip(texts, sampled)]
        mean = sum(map(sum, right)) / (len(rows) * args.samples)
        print(f"{split}: {len(rows)} functions; greedy {dict(kinds.most_common())}; T=1 mean pass rate {mean:.3f}, "
              f"pass@{args.samples} {sum(map(any, right)) / len(rows):.3f}")


if __name__ == "__main__":
    main()
