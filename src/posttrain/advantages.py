"""Advantage estimators for online RL, one registry with one call signature.

Every estimator is called as::

    advantages, returns = ADVANTAGE_ESTIMATORS.get(name)(
        rewards,            # (N,) float: one scalar (outcome) reward per completion
        group_ids,          # (N,) long: completions with the same id answer the same prompt
        *, eps=1e-6, baseline_rewards=None, values=None, token_rewards=None, mask=None,
        gamma=1.0, lam=1.0,
    )

Output shapes:
- sequence-level (``grpo``, ``dr_grpo``, ``rloo``, ``remax``; ``reinforce_pp`` and
  ``reinforce_pp_baseline`` when ``token_rewards`` is None): ``advantages`` (N,), ``returns`` (N,)
  = ``rewards`` (the undiscounted return of the completion).
- token-level (``gae`` always; ``reinforce_pp`` / ``reinforce_pp_baseline`` when ``token_rewards``
  (N, T) is given, e.g. ``-beta * kl`` per token for KL-in-reward): ``advantages`` (N, T) and
  ``returns`` (N, T), both 0 where ``mask`` is 0. The outcome reward is added at the last valid token.
Policy losses accept either shape; `expand_to_tokens` broadcasts (N,) to (N, T).

Papers:
- grpo: Shao et al. 2024, "DeepSeekMath" — A_i = (r_i - mean_g) / (std_g + eps).
- dr_grpo: Liu et al. 2025, "Understanding R1-Zero-Like Training" — A_i = r_i - mean_g.
- rloo: Ahmadian et al. 2024, "Back to Basics" — A_i = r_i - mean_{j != i in g} r_j.
- reinforce_pp: Hu 2025, "REINFORCE++" — returns normalized over the whole batch.
- reinforce_pp_baseline: same paper — group mean subtracted, then batch normalization.
- remax: Li et al. 2023, "ReMax" — A_i = r_i - r(greedy rollout of the same prompt).
- gae: Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE".

Departures / choices:
- Standard deviations are unbiased (Bessel), as ``torch.std`` in TRL and verl.
- A group of size 1 gets advantage 0 under grpo / dr_grpo / rloo (no comparison is possible);
  verl instead uses mean 0, std 1 there, i.e. the raw reward.
- Token-level passes skip positions where ``mask`` is 0 (holes and any padding side), carrying the
  next value / return across them, as verl's GAE does. After the last valid token the value is 0.
- Normalized token-level advantages are whitened over all valid tokens of the batch.
"""
from __future__ import annotations

from typing import Callable

import torch

from posttrain.registry import Registry

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageEstimator",
    "compute_advantages",
    "group_stats",
    "zero_std_group_fraction",
    "expand_to_tokens",
]

AdvantageEstimator = Callable[..., tuple[torch.Tensor, torch.Tensor]]
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


# ----------------------------------------------------------------------------------------------
# helpers


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor):
    """Per-item group (mean, unbiased std, size), each (N,). Size-1 groups have std 0."""
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be (N,)")
    r = rewards.float()
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = uniq.numel()
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, torch.ones_like(r))
    total = torch.zeros_like(count).index_add_(0, inv, r)
    mean = (total / count)[inv]
    sq = torch.zeros_like(count).index_add_(0, inv, (r - mean) ** 2)
    var = sq / (count - 1).clamp_min(1.0)
    return mean, var.sqrt()[inv], count[inv]


def zero_std_group_fraction(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Fraction of groups (of size >= 2) whose rewards are all equal: they carry no GRPO signal."""
    _, std, size = group_stats(rewards, group_ids)
    _, first = _first_index(group_ids)
    multi = size[first] > 1
    zero = (std[first] == 0) & multi
    return (zero.sum() / multi.sum().clamp_min(1)).float()


def _first_index(group_ids: torch.Tensor):
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    pos = torch.arange(inv.numel(), device=inv.device)
    first = torch.full((uniq.numel(),), inv.numel(), dtype=torch.long, device=inv.device)
    first = first.scatter_reduce(0, inv, pos, reduce="amin")
    return uniq, first


def expand_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, T) by repeating each sequence's advantage over its valid tokens; (N, T) passes."""
    if advantages.dim() == 2:
        return advantages * mask.to(advantages.dtype)
    return advantages.unsqueeze(-1) * mask.to(advantages.dtype)


def _masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp_min(1.0)
    var = (((x - mean) ** 2) * m).sum() / (n - 1).clamp_min(1.0)
    return (x - mean) / (var.sqrt() + eps) * m


def _last_token_onehot(mask: torch.Tensor) -> torch.Tensor:
    m = mask.long()
    return ((m.cumsum(-1) == m.sum(-1, keepdim=True)) & mask.bool()).to(torch.float32)


def _token_rewards_with_outcome(outcome, token_rewards, mask):
    mask = torch.ones_like(token_rewards, dtype=torch.bool) if mask is None else mask.bool()
    total = token_rewards.float() * mask + outcome.float().unsqueeze(-1) * _last_token_onehot(mask)
    return total, mask


def _discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{next valid t}; 0 at masked positions. Loop over T, vectorized over N."""
    out = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        valid = mask[:, t]
        running = torch.where(valid, token_rewards[:, t] + gamma * running, running)
        out[:, t] = torch.where(valid, running, torch.zeros_like(running))
    return out


def _check_rewards(rewards, group_ids):
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be (N,)")
    return rewards.float()


# ----------------------------------------------------------------------------------------------
# sequence-level estimators (all share the signature; unused keywords are ignored)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                    token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N,): (r - group mean) / (group std + eps); 0 for size-1 groups."""
    r = _check_rewards(rewards, group_ids)
    mean, std, _ = group_stats(r, group_ids)
    return (r - mean) / (std + eps), r


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                       token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N,): r - group mean (no std division)."""
    r = _check_rewards(rewards, group_ids)
    mean, _, _ = group_stats(r, group_ids)
    return r - mean, r


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                    token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N,): r_i - mean of the other rewards in the group = n/(n-1) (r_i - mean); 0 if n = 1."""
    r = _check_rewards(rewards, group_ids)
    mean, _, size = group_stats(r, group_ids)
    scale = torch.where(size > 1, size / (size - 1).clamp_min(1.0), torch.zeros_like(size))
    return (r - mean) * scale, r


@ADVANTAGE_ESTIMATORS.register("remax")
def remax_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                     token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N,): r - baseline_rewards, the reward of the greedy rollout for the same prompt."""
    r = _check_rewards(rewards, group_ids)
    if baseline_rewards is None or baseline_rewards.shape != r.shape:
        raise ValueError("remax needs baseline_rewards (N,): the greedy-rollout reward of each item's prompt")
    return r - baseline_rewards.float(), r


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                            token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N,) batch-whitened rewards; or (N, T) batch-whitened discounted returns of
    token_rewards + outcome at the last token when token_rewards is given."""
    r = _check_rewards(rewards, group_ids)
    if token_rewards is None:
        return _masked_whiten(r, torch.ones_like(r, dtype=torch.bool), eps), r
    total, m = _token_rewards_with_outcome(r, token_rewards, mask)
    returns = _discounted_returns(total, m, gamma)
    return _masked_whiten(returns, m, eps), returns


@ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                                     token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """As reinforce_pp, with the group mean reward subtracted from the outcome before whitening."""
    r = _check_rewards(rewards, group_ids)
    mean, _, _ = group_stats(r, group_ids)
    centered = r - mean
    if token_rewards is None:
        return _masked_whiten(centered, torch.ones_like(r, dtype=torch.bool), eps), r
    total, m = _token_rewards_with_outcome(centered, token_rewards, mask)
    returns = _discounted_returns(total, m, gamma)
    return _masked_whiten(returns, m, eps), returns


# ----------------------------------------------------------------------------------------------
# token-level: GAE


@ADVANTAGE_ESTIMATORS.register("gae")
def gae_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                   token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N, T) GAE(gamma, lam) over token_rewards (+ outcome reward at the last valid token).

    delta_t = r_t + gamma V_{t+1} - V_t; A_t = delta_t + gamma lam A_{t+1}; returns = A + V.
    Not whitened (the trainer may whiten). values (N, T) required; token_rewards defaults to 0.
    """
    r = _check_rewards(rewards, group_ids)
    if values is None or values.dim() != 2 or values.shape[0] != r.shape[0]:
        raise ValueError("gae needs values (N, T)")
    v = values.detach().float()
    tr = torch.zeros_like(v) if token_rewards is None else token_rewards
    total, m = _token_rewards_with_outcome(r, tr, mask)
    adv = torch.zeros_like(v)
    next_value = torch.zeros_like(v[:, 0])
    last_gae = torch.zeros_like(v[:, 0])
    for t in range(v.shape[1] - 1, -1, -1):
        valid = m[:, t]
        delta = total[:, t] + gamma * next_value - v[:, t]
        gae_t = delta + gamma * lam * last_gae
        last_gae = torch.where(valid, gae_t, last_gae)
        next_value = torch.where(valid, v[:, t], next_value)
        adv[:, t] = torch.where(valid, gae_t, torch.zeros_like(gae_t))
    returns = (adv + v) * m
    return adv, returns


def compute_advantages(name: str, rewards: torch.Tensor, group_ids: torch.Tensor, **kwargs):
    """Look up `name` in ADVANTAGE_ESTIMATORS and call it; computed without autograd."""
    with torch.no_grad():
        return ADVANTAGE_ESTIMATORS.get(name)(rewards, group_ids, **kwargs)
