"""Policy-gradient objectives (PPO family), one registry with one call signature.

Every objective is called as::

    per_token_loss, stats = POLICY_LOSSES.get(name)(
        logp,          # (B, T) log pi_theta(y_t) of the sampled tokens (with grad)
        old_logp,      # (B, T) log pi_old(y_t) at sampling time (no grad)
        advantages,    # (B,) per sequence or (B, T) per token
        mask,          # (B, T) 1 for completion tokens that are trained
        *, clip_low=0.2, clip_high=0.2, dual_clip=None,
    )

and returns a (B, T) loss (0 where mask is 0) plus a dict of detached scalar stats:
``clip_frac_low``, ``clip_frac_high``, ``dual_clip_frac``, ``approx_kl`` (k3 estimate of
KL(pi_old || pi_theta) over valid tokens), ``ratio_mean``, ``ratio_max``. The loss is NOT reduced:
the trainer calls ``ops.aggregate(loss, mask, mode)`` so the objective and its averaging stay separate.

Objectives:
- ``ppo``: clipped surrogate, Schulman et al. 2017, with asymmetric "clip-higher" bounds
  [1 - clip_low, 1 + clip_high] (DAPO, Yu et al. 2025) and optional dual clip (Ye et al. 2020,
  "Mastering Complex Control in MOBA Games"): for A < 0 the loss is capped at -A * dual_clip.
- ``gspo``: Zheng et al. 2025, "Group Sequence Policy Optimization": the importance ratio is the
  sequence-level s_i = exp(mean_t(logp - old_logp)); clipping acts on s_i. Implemented in the
  GSPO-token form s_it = sg(s_i) * exp(logp_t - sg(logp_t)), whose value is s_i on every token and whose
  gradient equals the sequence objective's under ``seq-mean-token-mean`` aggregation. The paper's
  clip ranges are tiny (3e-4 / 4e-4): pass them explicitly.
- ``cispo``: MiniMax-M1 (MiniMax 2025): loss = -sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * logp,
  so every token keeps a gradient; the IS weight is clipped and detached. The paper effectively sets
  no lower bound: pass ``clip_low=1.0`` for that.
- ``reinforce``: -A * exp(logp - old_logp), unclipped. With old_logp = logp.detach() it is exactly
  vanilla on-policy REINFORCE (gradient -A * grad logp).

Departures: log-ratios are clamped to [-20, 20] before exponentiation (as verl) and set to 0 at
masked positions so that padding garbage never reaches the loss or its gradient.
"""
from __future__ import annotations

from typing import Callable

import torch

from posttrain.ops import kl_estimate, masked_mean
from posttrain.registry import Registry

__all__ = ["POLICY_LOSSES", "PolicyLoss", "policy_loss", "kl_penalty_loss", "entropy_bonus"]

PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")

_MAX_LOG_RATIO = 20.0


def _prepare(logp, old_logp, advantages, mask):
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, mask {tuple(mask.shape)} must be equal (B, T)"
        )
    if advantages.dim() == 1:
        if advantages.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages {tuple(advantages.shape)} do not match batch {logp.shape[0]}")
        advantages = advantages.unsqueeze(-1)
    elif advantages.shape != logp.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be (B,) or (B, T) = {tuple(logp.shape)}")
    m = mask.bool()
    log_ratio = torch.where(m, logp - old_logp.detach(), torch.zeros_like(logp))
    log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return log_ratio, advantages.detach().to(logp.dtype), m


def _stats(log_ratio, ratio, m, *, low=None, high=None, dual=None):
    zero = torch.zeros((), device=ratio.device)
    with torch.no_grad():
        lr = log_ratio.detach()
        return {
            "clip_frac_low": zero if low is None else masked_mean(low.float(), m),
            "clip_frac_high": zero if high is None else masked_mean(high.float(), m),
            "dual_clip_frac": zero if dual is None else masked_mean(dual.float(), m),
            "approx_kl": masked_mean(kl_estimate(torch.zeros_like(lr), lr, "k3"), m),
            "ratio_mean": masked_mean(ratio.detach(), m),
            "ratio_max": torch.where(m, ratio.detach(), torch.zeros_like(lr)).max(),
        }


def _clipped_surrogate(ratio, adv, m, clip_low, clip_high, dual_clip):
    """max(-A r, -A clip(r)), then min(., -A c) for A < 0 when dual_clip = c. Returns loss and masks."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    low = (ratio < 1.0 - clip_low) & (adv < 0) & m
    high = (ratio > 1.0 + clip_high) & (adv > 0) & m
    dual = None
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        cap = -adv * dual_clip
        dual = (adv < 0) & (loss > cap) & m
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
    return loss, low, high, dual


@POLICY_LOSSES.register("ppo")
def ppo_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None):
    """Clipped surrogate with clip-higher and optional dual clip; (B, T) loss and stats."""
    log_ratio, adv, m = _prepare(logp, old_logp, advantages, mask)
    ratio = log_ratio.exp()
    loss, low, high, dual = _clipped_surrogate(ratio, adv, m, clip_low, clip_high, dual_clip)
    loss = torch.where(m, loss, torch.zeros_like(loss))
    return loss, _stats(log_ratio, ratio, m, low=low, high=high, dual=dual)


@POLICY_LOSSES.register("gspo")
def gspo_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None):
    """Sequence-ratio clipped surrogate (GSPO-token form); clip fractions count tokens of clipped sequences."""
    log_ratio, adv, m = _prepare(logp, old_logp, advantages, mask)
    mf = m.to(log_ratio.dtype)
    seq_log_ratio = (log_ratio * mf).sum(-1) / mf.sum(-1).clamp_min(1.0)
    token_log_ratio = seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach()
    token_log_ratio = torch.where(m, token_log_ratio, torch.zeros_like(token_log_ratio))
    ratio = token_log_ratio.clamp(max=_MAX_LOG_RATIO).exp()
    loss, low, high, dual = _clipped_surrogate(ratio, adv, m, clip_low, clip_high, dual_clip)
    loss = torch.where(m, loss, torch.zeros_like(loss))
    return loss, _stats(log_ratio, ratio, m, low=low, high=high, dual=dual)


@POLICY_LOSSES.register("cispo")
def cispo_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None):
    """-sg(clip(r)) * A * logp: clipped, detached IS weight; dual_clip is ignored."""
    log_ratio, adv, m = _prepare(logp, old_logp, advantages, mask)
    ratio = log_ratio.exp()
    weight = ratio.detach().clamp(1.0 - clip_low, 1.0 + clip_high)
    safe_logp = torch.where(m, logp, torch.zeros_like(logp))
    loss = torch.where(m, -weight * adv * safe_logp, torch.zeros_like(logp))
    low = (ratio < 1.0 - clip_low) & m
    high = (ratio > 1.0 + clip_high) & m
    return loss, _stats(log_ratio, ratio, m, low=low, high=high)


@POLICY_LOSSES.register("reinforce")
def reinforce_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None):
    """-A * exp(logp - old_logp), no clipping; clip arguments are ignored."""
    log_ratio, adv, m = _prepare(logp, old_logp, advantages, mask)
    ratio = log_ratio.exp()
    loss = torch.where(m, -adv * ratio, torch.zeros_like(ratio))
    return loss, _stats(log_ratio, ratio, m)


def policy_loss(name: str, logp, old_logp, advantages, mask, **kwargs):
    """Look up `name` in POLICY_LOSSES and call it."""
    return POLICY_LOSSES.get(name)(logp, old_logp, advantages, mask, **kwargs)


# ----------------------------------------------------------------------------------------------
# regularizers (also per-token, also reduced by the trainer)


def kl_penalty_loss(logp, ref_logp, mask, kind: str = "k3"):
    """Per-token KL(pi_theta || pi_ref) estimate (ops.kl_estimate: k1 / k2 / k3), 0 where masked.

    As a loss term (GRPO's beta * KL): ``beta * aggregate(kl, mask, mode)``. Stats: ``kl`` mean.
    """
    if logp.shape != ref_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, ref_logp {tuple(ref_logp.shape)}, mask {tuple(mask.shape)} disagree")
    m = mask.bool()
    safe_logp = torch.where(m, logp, torch.zeros_like(logp))
    safe_ref = torch.where(m, ref_logp.detach(), torch.zeros_like(logp))
    kl = torch.where(m, kl_estimate(safe_logp, safe_ref, kind), torch.zeros_like(logp))
    return kl, {"kl": masked_mean(kl.detach(), m)}


def entropy_bonus(entropy, mask):
    """Per-token loss term -entropy (minimizing it raises entropy); 0 where masked.

    Use as ``coef * aggregate(term, mask, mode)``. Stats: ``entropy`` mean over valid tokens.
    """
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and mask {tuple(mask.shape)} disagree")
    m = mask.bool()
    term = torch.where(m, -entropy, torch.zeros_like(entropy))
    return term, {"entropy": masked_mean(entropy.detach(), m)}
