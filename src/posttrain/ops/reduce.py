"""Masked reductions with named modes (after verl's `agg_loss`).

The objective is separate from its averaging: every loss returns a per-token (B, T) tensor and one
of these reducers turns it into a scalar. Global normalizers (`num_tokens`, `num_seqs`) let the sum
over micro-batches equal the full-batch value exactly, whatever the split.

Modes:
- ``token-mean``: sum over all valid tokens / number of valid tokens (DAPO).
- ``seq-mean-token-mean``: mean over sequences of each sequence's token mean (GRPO paper).
- ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.
- ``seq-sum-norm``: sum over all tokens / (number of sequences * fixed length) (Dr. GRPO).
"""
from __future__ import annotations

from typing import Callable

import torch

from posttrain.registry import Registry

Reducer = Callable[..., torch.Tensor]
REDUCERS: Registry[Reducer] = Registry("reduction mode")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() if dim is None else (values * m).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    m = mask.to(values.dtype)
    if dim is None:
        return (values * m).sum() / m.sum().clamp_min(1.0)
    return (values * m).sum(dim) / m.sum(dim).clamp_min(1.0)


@REDUCERS.register("token-mean")
def _token_mean(values, mask, *, num_tokens=None, num_seqs=None, fixed_length=None):
    denom = mask.sum().clamp_min(1) if num_tokens is None else num_tokens
    return masked_sum(values, mask) / denom


@REDUCERS.register("seq-mean-token-mean")
def _seq_mean_token_mean(values, mask, *, num_tokens=None, num_seqs=None, fixed_length=None):
    per_seq = masked_mean(values, mask, dim=-1)
    denom = values.shape[0] if num_seqs is None else num_seqs
    return per_seq.sum() / denom


@REDUCERS.register("seq-mean-token-sum")
def _seq_mean_token_sum(values, mask, *, num_tokens=None, num_seqs=None, fixed_length=None):
    per_seq = masked_sum(values, mask, dim=-1)
    denom = values.shape[0] if num_seqs is None else num_seqs
    return per_seq.sum() / denom


@REDUCERS.register("seq-sum-norm")
def _seq_sum_norm(values, mask, *, num_tokens=None, num_seqs=None, fixed_length=None):
    length = values.shape[-1] if fixed_length is None else fixed_length
    denom = values.shape[0] if num_seqs is None else num_seqs
    return masked_sum(values, mask) / (denom * length)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | None = None,
    fixed_length: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token (B, T) tensor to a scalar with a named mode (see module docstring)."""
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} disagree")
    return REDUCERS.get(mode)(
        values, mask, num_tokens=num_tokens, num_seqs=num_seqs, fixed_length=fixed_length
    )
