"""Tokenized (prompt, response) sequences: response tokenization after a prompt, truncation, and the
right-padded batch with labels on the response tokens.

This is the layer below every pairwise consumer: the preference and reward-model trainers
(`trainers.pairs` re-exports these names) and the reward-model scorer (`rewards.model`), so a scored
pair is tokenized exactly as it was in training without a reward importing a trainer.
Over-long sequences keep the end of the prompt and the start of the response.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.data import DataError, encode_response
from posttrain.data.collate import IGNORE

__all__ = ["SequenceBatch", "sequence_batch", "tokenize_response", "truncate_pair"]


@dataclass
class SequenceBatch:
    """R right-padded sequences. labels[r, t] is the target of position t (shifted), IGNORE where
    not scored (prompt, padding). last_index[r] is the position of the last real token."""

    input_ids: torch.Tensor  # (R, T) long
    attention_mask: torch.Tensor  # (R, T) long
    labels: torch.Tensor  # (R, T) long
    last_index: torch.Tensor  # (R,) long

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def truncate_pair(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """(prompt, response, truncated?) fitting `max_length`: the prompt keeps its end (at least one
    token, at most half the length when the response needs the rest), the response its start."""
    if len(prompt) + len(response) <= max_length:
        return prompt, response, False
    keep_prompt = max(1, min(len(prompt), max_length // 2, max_length - len(response)))
    prompt = prompt[-keep_prompt:]
    return prompt, response[: max_length - len(prompt)], True


def tokenize_response(tokenizer, prompt, response) -> list[int]:
    """Response ids after `prompt` (conversational responses may be a string or a message list)."""
    if isinstance(prompt, list) and isinstance(response, list):
        return encode_response(tokenizer, prompt, response)
    if isinstance(prompt, list):
        return encode_response(tokenizer, prompt, [{"role": "assistant", "content": response}])
    if isinstance(response, list):
        raise DataError("a conversational response needs a conversational prompt")
    return encode_response(tokenizer, prompt, response)


def sequence_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> SequenceBatch:
    """Right-padded (prompt + response) rows with labels on the response tokens only."""
    R = len(prompts)
    T = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)
    labels = torch.full((R, T), IGNORE, dtype=torch.long)
    attn = torch.zeros((R, T), dtype=torch.long)
    last = torch.zeros(R, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r)
        labels[i, len(p) - 1 : n - 1] = torch.tensor(r)
        attn[i, :n] = 1
        last[i] = n - 1
    return SequenceBatch(input_ids, attn, labels, last)
