"""Shared pieces of test-time search: the policy wrapper, scorer protocols, result types, helpers.

Every search method is a function ``method(policy, prompt, scorer=None, **options) -> SearchResult``
registered by name in `SEARCH_METHODS`. A `Policy` is a `RolloutEngine` plus a tokenizer-like object
(``encode(text) -> ids``, ``decode(ids) -> text``). Continuations are built from the engine's token
ids unchanged (prompt ids + the ids of the steps so far); generated text is never re-tokenized.
Forced strings (budget forcing's "Wait", an end-of-thinking delimiter) are the only text encoded.

Token accounting: ``tokens_spent`` counts every token the engine generated for the search, including
candidates that were discarded and MCTS rollouts; forced tokens and scorer compute are not counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from posttrain.registry import Registry
from posttrain.rollout.base import Completion, RolloutEngine, SamplingParams

__all__ = [
    "Tokenizer",
    "OrmScorer",
    "PrmScorer",
    "Policy",
    "Candidate",
    "SearchResult",
    "SEARCH_METHODS",
    "split_steps",
    "aggregate_steps",
    "STEP_AGGREGATIONS",
    "default_extract",
]


class Tokenizer(Protocol):
    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]: ...

    def decode(self, ids: Sequence[int], *args: Any, **kwargs: Any) -> str: ...


@runtime_checkable
class OrmScorer(Protocol):
    def score(self, prompt: str, completions: list[str]) -> list[float]:
        """One outcome score per completion (higher is better)."""
        ...


@runtime_checkable
class PrmScorer(Protocol):
    def score_steps(self, prompt: str, steps_list: list[list[str]]) -> list[list[float]]:
        """For each solution (a list of steps), one score in [0, 1] per step."""
        ...


Scorer = OrmScorer | PrmScorer


def default_extract(text: str) -> str | None:
    from posttrain.rewards.math import extract_answer

    return extract_answer(text)


@dataclass
class Policy:
    """A rollout engine and its tokenizer, plus a running count of generated tokens."""

    engine: RolloutEngine
    tokenizer: Tokenizer
    tokens_spent: int = 0
    chat: bool = False  # render the prompt as one user message with the tokenizer's chat template

    def encode_prompt(self, prompt: str) -> list[int]:
        if self.chat:
            from posttrain.data import encode_prompt

            return list(encode_prompt(self.tokenizer, [{"role": "user", "content": prompt}]))
        return list(self.tokenizer.encode(prompt))

    def encode_forced(self, text: str) -> list[int]:
        """Ids of a string appended mid-sequence (no BOS/special tokens where the tokenizer allows)."""
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        except TypeError:
            return list(self.tokenizer.encode(text))

    def text_of(self, completion: Completion) -> str:
        return completion.text if completion.text else self.tokenizer.decode(completion.token_ids)

    def generate(self, prefixes: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """`engine.generate`, counting every generated token into `tokens_spent`."""
        if not prefixes:
            return []
        out = self.engine.generate([list(p) for p in prefixes], params)
        if len(out) != len(prefixes):
            raise RuntimeError(f"engine returned {len(out)} groups for {len(prefixes)} prompts")
        self.tokens_spent += sum(len(c.token_ids) for group in out for c in group)
        return out


def derive_seed(seed: int | None, *parts: int) -> int | None:
    """A distinct, reproducible seed per engine call (None stays None: unseeded sampling)."""
    if seed is None:
        return None
    h = seed
    for p in parts:
        h = (h * 1_000_003 + p + 1) % (2**31 - 1)
    return h


@dataclass
class Candidate:
    text: str  # generated text (without the prompt)
    token_ids: list[int]  # generated ids, as the engine returned them (forced ids included, in order)
    answer: str | None
    score: float | None = None  # scorer value (aggregated over steps for a PRM); None if unscored
    finish_reason: str = "stop"


@dataclass
class SearchResult:
    answer: str | None
    score: float | None  # score of the chosen candidate, or vote weight / share for voting methods
    text: str  # the chosen completion (without the prompt)
    tokens_spent: int  # all tokens the engine generated for this search
    candidates: list[Candidate] = field(default_factory=list)  # the complete solutions considered
    method: str = ""
    info: dict[str, float | str] = field(default_factory=dict)  # method-specific diagnostics


def split_steps(text: str, sep: str = "\n") -> list[str]:
    """Steps of a solution: `text` split on `sep`, empty steps dropped (one step if `sep` absent)."""
    steps = [s for s in text.split(sep) if s.strip()]
    return steps if steps else [text]


STEP_AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": lambda xs: min(xs),
    "last": lambda xs: xs[-1],
    "prod": lambda xs: math.prod(xs),
    "mean": lambda xs: sum(xs) / len(xs),
}


def aggregate_steps(step_scores: Sequence[float], how: str = "min") -> float:
    """Solution score from PRM step scores: min (weakest step), last, prod, or mean."""
    if how not in STEP_AGGREGATIONS:
        raise KeyError(f"unknown step aggregation '{how}' (known: {', '.join(STEP_AGGREGATIONS)})")
    if not step_scores:
        raise ValueError("aggregate_steps: no step scores")
    return float(STEP_AGGREGATIONS[how](step_scores))


def score_texts(
    scorer: Scorer, prompt: str, texts: list[str], step_sep: str = "\n", step_agg: str = "min"
) -> list[float]:
    """Score complete solutions: a PRM (has ``score_steps``) is aggregated over steps, else ORM ``score``."""
    if not texts:
        return []
    if isinstance(scorer, PrmScorer):
        per_step = scorer.score_steps(prompt, [split_steps(t, step_sep) for t in texts])
        return [aggregate_steps(s, step_agg) for s in per_step]
    if isinstance(scorer, OrmScorer):
        return [float(x) for x in scorer.score(prompt, texts)]
    raise TypeError(f"scorer {type(scorer).__name__} has neither score() nor score_steps()")


SEARCH_METHODS: Registry[Callable[..., SearchResult]] = Registry("search method")
