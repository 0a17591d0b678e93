"""Typed batches, right padding and padding-free packing.

`LMBatch.labels[b, t]` is the target for position t (already shifted), -100 where not trained, so
the loss is `token_logprobs(logits, labels)` masked by `labels != -100`. Packing concatenates several
examples into one row with position ids restarting at 0 for each; with `attention_mask=None` the
model's mask code turns the restarts into a block-diagonal causal mask, so packed examples never see
each other and the packed loss equals the unpacked loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.data.chat import TokenizedExample

IGNORE = -100


@dataclass
class LMBatch:
    input_ids: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long, shifted targets, -100 = ignore
    position_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor | None  # (B, T) long; None for packed rows
    num_examples: int

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel() if self.attention_mask is None else self.attention_mask.sum())

    def model_inputs(self) -> dict:
        out = {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        return out


def shifted_labels(ex: TokenizedExample) -> list[int]:
    ids, m = ex.input_ids, ex.loss_mask
    return [ids[t + 1] if m[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def pad_batch(examples: list[TokenizedExample], pad_id: int) -> LMBatch:
    T = max(len(e) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e)
        input_ids[b, :n] = torch.tensor(e.input_ids)
        labels[b, :n] = torch.tensor(shifted_labels(e))
        attn[b, :n] = 1
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    return LMBatch(input_ids, labels, pos, attn, B)


def pack_rows(examples: list[TokenizedExample], max_tokens_per_row: int) -> list[list[TokenizedExample]]:
    """Greedy first-fit packing in the given order (deterministic)."""
    rows: list[list[TokenizedExample]] = []
    room: list[int] = []
    for e in examples:
        if len(e) > max_tokens_per_row:
            raise ValueError(f"example of {len(e)} tokens exceeds the packing row of {max_tokens_per_row}")
        for i, r in enumerate(room):
            if len(e) <= r:
                rows[i].append(e)
                room[i] -= len(e)
                break
        else:
            rows.append([e])
            room.append(max_tokens_per_row - len(e))
    return rows


def packed_batch(rows: list[list[TokenizedExample]], pad_id: int) -> LMBatch:
    T = max(sum(len(e) for e in row) for row in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for e in row:
            n = len(e)
            input_ids[b, t : t + n] = torch.tensor(e.input_ids)
            labels[b, t : t + n] = torch.tensor(shifted_labels(e))
            pos[b, t : t + n] = torch.arange(n)
            t += n
        if t < T:  # tail padding forms its own segment, never a target
            pos[b, t:] = torch.arange(T - t)
    return LMBatch(input_ids, labels, pos, None, sum(len(r) for r in rows))
