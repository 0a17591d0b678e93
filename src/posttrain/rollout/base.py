"""The rollout protocol: every generation engine (HF generate, vLLM, test fakes) speaks this.

Token ids go from the engine to the trainer unchanged: a `Completion` carries the sampled ids and
their sampling logprobs; `text` is for rewards and display only, never re-tokenized for training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()  # stop strings; the completion keeps the stop string
    seed: int | None = None


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # sampling logprob of each token in token_ids
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (hit max_new_tokens)
    text: str = ""
    stop_reason: str | None = None  # the stop string that ended it, if any


class RolloutEngine(Protocol):
    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        """For each prompt (token ids), `params.n` completions."""
        ...

    def update_weights(self, model) -> None:
        """Load the policy's current weights so the next rollouts are on-policy."""
        ...
