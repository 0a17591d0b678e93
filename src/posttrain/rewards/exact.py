"""Exact-match reward: the extracted answer equals the gold string after light normalization.

For answers that are labels rather than math (multiple-choice letters, names, yes/no). The answer is
taken with `rewards.math.extract_answer` (boxed, ``<answer>`` tags, ``####``, last number) and, if
none is found, the whole completion; both sides go through `normalize_answer` (strip ``$``,
whitespace, trailing period, ``\\text{}``; lower-case). No mathematical equivalence: use
`math_reward` for that.
"""
from __future__ import annotations

from posttrain.rewards.math import extract_answer, normalize_answer

__all__ = ["exact_match"]


def exact_match(prompts: list[str], completions: list[str], *, answer: list, **_columns) -> list[float | None]:
    """1.0 if normalized(extracted answer) == normalized(gold), else 0.0; None if gold is None."""
    out: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if gold is None:
            out.append(None)
            continue
        pred = extract_answer(completion)
        pred = completion if pred is None else pred
        out.append(1.0 if normalize_answer(pred) == normalize_answer(str(gold)) else 0.0)
    return out
