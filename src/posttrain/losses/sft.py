"""Supervised fine-tuning loss: negative log-likelihood of the trained (completion) tokens.

Returns the per-token loss; the reduction (token-mean over the whole step's tokens, so that any
micro-batch split gives the same update) is done by `posttrain.ops.aggregate`.
"""
from __future__ import annotations

import torch


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """token_logps, mask: (B, T) -> per-token NLL (B, T), zero where mask is 0."""
    nll = -token_logps * mask.to(token_logps.dtype)
    return nll, {"tokens": mask.sum().detach()}
