"""Masked reductions with named modes (after verl's `agg_loss`).

The objective is separate from its averaging: every loss returns a per-token (B, T) tensor and one
of these reducers turns it into a scalar. Global normalizers (`num_tokens`, `num_seqs`) let the sum
over micro-batches equal the full-batch value exactly, whatever the split.

Modes:
- ``token-mean``: sum over all valid tokens / number of valid tokens (DAPO).
- ``seq-mean-token-mean``: mean over sequences of each sequence's token mean (GRPO paper).
- ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.
- ``seq-sum-norm``: sum over all tokens / (number of sequences * fixed length) (Dr. GRPO).

"Sequences" are the rows with at least one valid token (`count_sequences`): a fully masked row (a
truncated completion under ``mask_truncated``, an empty one) is left out of the sequence count, as
verl's ``agg_loss`` does ("exclude fully masked sequences", also for its seq-mean-token-sum-norm).
Counting it would shrink every update by the share of rows kept. A global ``num_seqs`` passed in
must be counted the same way (``count_sequences`` of the whole mini-batch's mask).
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


def count_sequences(mask: torch.Tensor) -> torch.Tensor:
    """Number of rows of a (B, T) mask with at least one valid token (the reducers' sequence count)."""
    return mask.bool().any(-1).sum()


def _num_seqs(mask, num_seqs):
    return count_sequences(mask).clamp_min(1) if num_seqs is None else num_seqs


@REDUCERS.register("token-mean")
def _token_mean(values, mask, *, num_tokens=None, num_seqs=None, fixed_length=None):
    denom = mask.sum().clamp_min(1) if num_tokens is None else num_tokens
    return masked_sum(values, mask) / denom


@REDUCERS.register("seq-mean-token-mean")
def _seq_mean_token_mean(values, mask, *, num_tokens=None, num_seqs=None, fixed_length=None):
    per_seq = masked_mean(values, mask, dim=-1)  # 0 for a fully masked row
    return per_seq.sum() / _num_seqs(mask, num_seqs)


@REDUCERS.register("seq-mean-token-sum")
def _seq_mean_token_sum(values, mask, *, num_tokens=None, num_seqs=None, fixed_length=None):
    per_seq = masked_sum(values, mask, dim=-1)
    return per_seq.sum() / _num_seqs(mask, num_seqs)


@REDUCERS.register("seq-sum-norm")
def _seq_sum_norm(values, mask, *, num_tokens=None, num_seqs=None, fixed_length=None):
    length = values.shape[-1] if fixed_length is None else fixed_length
    return masked_sum(values, mask) / (_num_seqs(mask, num_seqs) * length)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    fixed_length: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token (B, T) tensor to a scalar with a named mode (see module docstring).

    num_tokens / num_seqs: global normalizers (valid tokens; rows with a valid token, `count_sequences`)
    when `values` is one micro-batch of a larger batch; by default this batch's own counts."""
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} disagree")
    return REDUCERS.get(mode)(
        values, mask, num_tokens=num_tokens, num_seqs=num_seqs, fixed_length=fixed_length
    )
