"""The rollout protocol: every generation engine (HF generate, vLLM, test fakes) speaks this.

Token ids go from the engine to the trainer unchanged: a `Completion` carries the sampled ids and
their sampling logprobs; `text` is for rewards and display only, never re-tokenized for training.

A completion also carries, for what comes after single-turn RL:
- ``token_mask``: one entry per token, 1 for a token the policy sampled, 0 for one injected by a tool
  or an environment (a multi-turn rollout appends their tokens; they get no loss and no gradient).
  Engines fill it with 1s; `Completion.mask()` gives it (1s when left empty by an older caller).
- ``policy_version``: the version of the weights that sampled it (the number given with the last
  `update_weights`), so an off-policy correction knows its behaviour policy.

Engines receive weights, not a module: ``update_weights(named_weights, version)`` with
(name, tensor) pairs in the Hugging Face checkpoint's names (LoRA merged), as vLLM and a remote
worker need them. `PolicyWeights` is that iterable, lazy: an engine that shares the trainer's module
(the colocated `HFEngine`) only records the version and never materializes a merged copy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()  # stop strings; the completion keeps the stop string
    seed: int | None = None
    # one seed per prompt: prompt i's k-th completion draws from its own stream (seeds[i], k), so what a
    # prompt samples does not depend on the prompts batched with it, or on which rank generates it
    seeds: tuple[int, ...] | None = None


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # sampling logprob of each token in token_ids
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (hit max_new_tokens)
    text: str = ""
    stop_reason: str | None = None  # the stop string that ended it, if any
    token_mask: list[int] = field(default_factory=list)  # 1 sampled by the policy, 0 injected (tool / env); empty: all 1
    policy_version: int = 0  # the weights version (`update_weights`) that sampled it

    def mask(self) -> list[int]:
        """The per-token mask, 1s when none was recorded; its length must equal the tokens'."""
        if not self.token_mask:
            return [1] * len(self.token_ids)
        if len(self.token_mask) != len(self.token_ids):
            raise ValueError(f"token_mask has {len(self.token_mask)} entries for {len(self.token_ids)} tokens")
        return list(self.token_mask)


class PolicyWeights:
    """The policy's weights as (name, tensor) pairs, Hugging Face names, LoRA merged; made lazily.

    `source` is the module they come from: an engine holding that same module can skip the copy."""

    def __init__(self, model):
        self.source = model

    def __iter__(self) -> Iterator[tuple[str, object]]:
        from posttrain.rollout.vllm import _plain_model  # torch-light: no vllm import

        yield from ((k, v.detach()) for k, v in _plain_model(self.source).state_dict().items())


class RolloutEngine(Protocol):
    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        """For each prompt (token ids), `params.n` completions."""
        ...

    def update_weights(self, named_weights: Iterable[tuple[str, object]], version: int) -> None:
        """Load the policy's weights ((name, tensor) pairs, e.g. `PolicyWeights`) as `version`, so the
        next rollouts are on-policy and their completions carry that version."""
        ...
