"""Clipped value-function loss for PPO critics (Schulman et al. 2017, as in OpenAI baselines' ppo2).

    v_clip = old_values + clip(values - old_values, -clip, clip)
    loss_t = 0.5 * max((values - returns)^2, (v_clip - returns)^2)

Returns a per-token (B, T) loss, 0 where mask is 0, plus detached stats; the trainer reduces it
with ``ops.aggregate``. ``clip=None`` gives the plain squared error 0.5 * (values - returns)^2.
Departure: none beyond the 0.5 factor (verl and TRL use it; some implementations omit it).
"""
from __future__ import annotations

import torch

from posttrain.ops import masked_mean

__all__ = ["value_loss"]


def value_loss(values, old_values, returns, mask, clip: float | None = 0.2):
    """(B, T) clipped value loss and stats ``vf_clip_frac``, ``value_mean``, ``value_error``."""
    if not (values.shape == old_values.shape == returns.shape == mask.shape):
        raise ValueError(
            f"values {tuple(values.shape)}, old_values {tuple(old_values.shape)}, "
            f"returns {tuple(returns.shape)}, mask {tuple(mask.shape)} must be equal"
        )
    m = mask.bool()
    target = returns.detach()
    err = (values - target) ** 2
    if clip is None:
        loss = 0.5 * err
        clipped_frac = torch.zeros((), device=values.device)
    else:
        old = old_values.detach()
        v_clip = old + (values - old).clamp(-clip, clip)
        err_clip = (v_clip - target) ** 2
        loss = 0.5 * torch.maximum(err, err_clip)
        clipped_frac = masked_mean((err_clip > err).float().detach(), m)
    loss = torch.where(m, loss, torch.zeros_like(loss))
    stats = {
        "vf_clip_frac": clipped_frac,
        "value_mean": masked_mean(values.detach(), m),
        "value_error": masked_mean(err.detach(), m),
    }
    return loss, stats
