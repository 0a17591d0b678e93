"""Length-aware rewards: cosine length scaling, n-gram repetition penalty, overlong punishment, L1.

- `make_cosine_length_reward`: Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in
  LLMs", eq. 1: CosFn(t, T, r_0, r_L) = r_L + 0.5 (r_0 - r_L)(1 + cos(pi t / T)), with (r_0, r_L) =
  (r0_correct, rL_correct) for correct answers (short correct ones earn more) and (r0_wrong,
  rL_wrong) for wrong ones (long wrong ones are punished less); t >= T gives ``r_exceed``.
  Defaults are the paper's (2, 1, -10, 0, -10).
- `make_repetition_penalty`: same paper's n-gram repetition penalty. Departure: the paper applies a
  per-token penalty on repeated n-grams; here it is the sequence-level form used by open-r1:
  ``max_penalty * (1 - unique_ngrams / total_ngrams)`` over whitespace words (0 if too short).
- `make_overlong_penalty`: DAPO (Yu et al. 2025) soft overlong punishment: 0 up to
  ``max_len - cache_len``, then linear down to -1 at ``max_len``, -1 beyond.
- `make_target_length_reward`: L1 (Aggarwal & Welleck 2025, "L1: Controlling How Long a Reasoning
  Model Thinks"): "exact" r = correct - alpha |n_target - n|; "max" r = correct * clip(alpha
  (n_target - n) + delta, 0, 1). The target comes from the ``target_length`` column.

Lengths: if the batch has a ``completion_lengths`` column (token counts from the rollout; the
preferred source, since the trainer holds token ids) it is used; otherwise ``length_fn(text)``,
by default the number of whitespace-separated words. Correctness is `math_reward` against the
``answer`` column unless ``correct_fn`` (any reward function, posttrain- or TRL-style, called by keyword
with `rewards.base.call_reward`) is given; an unscorable item (None) counts as wrong.
"""
from __future__ import annotations

import math
from typing import Callable

from posttrain.rewards.base import call_reward
from posttrain.rewards.math import math_reward

__all__ = [
    "make_cosine_length_reward",
    "make_repetition_penalty",
    "make_overlong_penalty",
    "make_target_length_reward",
    "cosine_scale",
    "word_count",
]


def word_count(text: str) -> int:
    return len(text.split())


def _lengths(completions, columns, length_fn) -> list[int]:
    given = columns.get("completion_lengths")
    return [int(x) for x in given] if given is not None else [length_fn(c) for c in completions]


def _correct(correct_fn, prompts, completions, columns) -> list[bool]:
    fn = correct_fn or math_reward
    return [v is not None and v >= 1.0 for v in call_reward(fn, list(prompts), list(completions), columns)]


def cosine_scale(t: float, max_len: float, r_0: float, r_L: float) -> float:
    """r_L + 0.5 (r_0 - r_L)(1 + cos(pi t / T)): r_0 at t = 0, r_L at t = T."""
    return r_L + 0.5 * (r_0 - r_L) * (1.0 + math.cos(math.pi * t / max_len))


def make_cosine_length_reward(max_len: int, *, r0_correct=2.0, rL_correct=1.0, r0_wrong=-10.0,
                              rL_wrong=0.0, r_exceed=-10.0, length_fn: Callable[[str], int] = word_count,
                              correct_fn=None):
    """Cosine length-scaled correctness reward (Yeo et al. 2025)."""
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")

    def cosine_length_reward(prompts, completions, **columns):
        lengths = _lengths(completions, columns, length_fn)
        correct = _correct(correct_fn, prompts, completions, columns)
        out = []
        for n, ok in zip(lengths, correct):
            if n >= max_len:
                out.append(float(r_exceed))
            elif ok:
                out.append(cosine_scale(n, max_len, r0_correct, rL_correct))
            else:
                out.append(cosine_scale(n, max_len, r0_wrong, rL_wrong))
        return out

    return cosine_length_reward


def make_repetition_penalty(ngram_size: int = 3, max_penalty: float = -1.0):
    """Sequence-level n-gram repetition penalty in [max_penalty, 0]; max_penalty must be <= 0."""
    if max_penalty > 0:
        raise ValueError(f"max_penalty must be <= 0, got {max_penalty}")

    def repetition_penalty(prompts, completions, **_columns):
        out = []
        for c in completions:
            words = c.lower().split()
            if len(words) < ngram_size:
                out.append(0.0)
                continue
            grams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
            out.append((1.0 - len(set(grams)) / len(grams)) * max_penalty)
        return out

    return repetition_penalty


def make_overlong_penalty(max_len: int, cache_len: int, *, length_fn: Callable[[str], int] = word_count):
    """DAPO soft overlong punishment: 0, then linear to -1 over the last cache_len, then -1."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")

    def overlong_penalty(prompts, completions, **columns):
        out = []
        for n in _lengths(completions, columns, length_fn):
            if n <= max_len - cache_len:
                out.append(0.0)
            elif n <= max_len:
                out.append(((max_len - cache_len) - n) / cache_len)
            else:
                out.append(-1.0)
        return out

    return overlong_penalty


def make_target_length_reward(*, mode: str = "exact", alpha: float = 0.0003, delta: float = 0.5,
                              length_fn: Callable[[str], int] = word_count, correct_fn=None):
    """L1 length-controlled reward; needs a ``target_length`` column (tokens the prompt asked for)."""
    if mode not in ("exact", "max"):
        raise ValueError(f"mode must be 'exact' or 'max', got {mode!r}")

    def target_length_reward(prompts, completions, *, target_length, **columns):
        lengths = _lengths(completions, columns, length_fn)
        correct = _correct(correct_fn, prompts, completions, columns)
        out = []
        for n, n_target, ok in zip(lengths, target_length, correct):
            if mode == "exact":
                out.append(float(ok) - alpha * abs(n_target - n))
            else:
                out.append(float(ok) * min(1.0, max(0.0, alpha * (n_target - n) + delta)))
        return out

    return target_length_reward
