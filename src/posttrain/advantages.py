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
- turn_discounted: multi-turn episodes, per-turn discounted returns against a group baseline (in
  the spirit of SWEET-RL's turn-level credit, Zhou et al. 2025, without its critic).

Departures / choices:
- Standard deviations are unbiased (Bessel), as ``torch.std`` in TRL and verl.
- A group of size 1 gets advantage 0 under grpo / dr_grpo / rloo (no comparison is possible);
  verl instead uses mean 0, std 1 there, i.e. the raw reward.
- Token-level passes skip positions where ``mask`` is 0 (holes and any padding side), carrying the
  next value / return across them, as verl's GAE does. After the last valid token the value is 0.
- Normalized token-level advantages are whitened over all valid tokens of the batch.

What an estimator needs or accepts is declared where it is registered (`EstimatorNeeds`, read with
`estimator_needs(name)`): a group of samples per prompt, a greedy baseline rollout (remax), per-token
rewards (gae, reinforce_pp*), a critic (gae). The trainer asks these instead of keeping name lists.

Process rewards (a PRM's per-step scores) enter in one of two ways (`trainers.rl` picks by
``EstimatorNeeds.token_rewards``):
- token-level estimators (``gae``, ``reinforce_pp*``) take them in ``token_rewards`` at each step's
  last token (Math-Shepherd, Wang et al. 2024, step-by-step PPO);
- group estimators add `process_advantages` (DeepSeekMath Sec. 4.1.3, process supervision with GRPO)
  to the outcome advantage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from posttrain.registry import Registry

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageEstimator",
    "EstimatorNeeds",
    "estimator_needs",
    "compute_advantages",
    "group_stats",
    "zero_std_group_fraction",
    "expand_to_tokens",
    "process_advantages",
]

AdvantageEstimator = Callable[..., tuple[torch.Tensor, torch.Tensor]]
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


@dataclass(frozen=True)
class EstimatorNeeds:
    """What an estimator needs from the trainer and what it accepts, declared at registration.

    groups: its advantage compares the samples of one prompt, so a group whose rewards are all equal
      teaches nothing (the trainer warns when every group is like that).
    token_rewards: it accepts per-token rewards (N, T) (KL-in-reward per token, PRM step rewards);
      without it the KL enters the sequence reward and PRM scores enter as `process_advantages`.
    baseline_rollout: it needs ``baseline_rewards``, the reward of one greedy rollout per prompt (ReMax).
    value_model: it needs ``values`` (N, T) from a critic (GAE).
    process_std: `process_advantages` beside it divide by the group std (False: mean only, Dr. GRPO).
    turn_rewards: it credits turns: ``mask`` (the policy-token mask; env tokens are 0) delimits them
      and a multi-turn episode's per-turn rewards come in ``token_rewards`` (each at its turn's last
      policy token; the trainer then passes in ``rewards`` only what the stream does not hold).
    """

    groups: bool = False
    token_rewards: bool = False
    baseline_rollout: bool = False
    value_model: bool = False
    process_std: bool = True
    turn_rewards: bool = False


def estimator_needs(name: str) -> EstimatorNeeds:
    """The `EstimatorNeeds` that estimator `name` registered with (unknown names raise)."""
    return ADVANTAGE_ESTIMATORS.needs(name) or EstimatorNeeds()


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


@ADVANTAGE_ESTIMATORS.register("grpo", needs=EstimatorNeeds(groups=True))
def grpo_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                    token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N,): (r - group mean) / (group std + eps); 0 for size-1 groups."""
    r = _check_rewards(rewards, group_ids)
    mean, std, _ = group_stats(r, group_ids)
    return (r - mean) / (std + eps), r


@ADVANTAGE_ESTIMATORS.register("dr_grpo", needs=EstimatorNeeds(groups=True, process_std=False))
def dr_grpo_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                       token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N,): r - group mean (no std division)."""
    r = _check_rewards(rewards, group_ids)
    mean, _, _ = group_stats(r, group_ids)
    return r - mean, r


@ADVANTAGE_ESTIMATORS.register("rloo", needs=EstimatorNeeds(groups=True))
def rloo_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                    token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N,): r_i - mean of the other rewards in the group = n/(n-1) (r_i - mean); 0 if n = 1."""
    r = _check_rewards(rewards, group_ids)
    mean, _, size = group_stats(r, group_ids)
    scale = torch.where(size > 1, size / (size - 1).clamp_min(1.0), torch.zeros_like(size))
    return (r - mean) * scale, r


@ADVANTAGE_ESTIMATORS.register("remax", needs=EstimatorNeeds(baseline_rollout=True))
def remax_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                     token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N,): r - baseline_rewards, the reward of the greedy rollout for the same prompt."""
    r = _check_rewards(rewards, group_ids)
    if baseline_rewards is None or baseline_rewards.shape != r.shape:
        raise ValueError("remax needs baseline_rewards (N,): the greedy-rollout reward of each item's prompt")
    return r - baseline_rewards.float(), r


@ADVANTAGE_ESTIMATORS.register("reinforce_pp", needs=EstimatorNeeds(token_rewards=True))
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


@ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline", needs=EstimatorNeeds(groups=True, token_rewards=True))
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
# multi-turn: discounted per-turn credit


def turn_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(N, T) the discounted return of each policy token's turn, 0 where `mask` is 0.

    A turn is a maximal run of `mask` 1s (env tokens, mask 0, separate turns). With r_k the sum of
    turn k's rewards, G_k = r_k + gamma * G_{k+1}; every token of turn k gets G_k. The discount is
    per turn, not per token (a long turn is not discounted more than a short one)."""
    m = mask.bool()
    if not m.any():
        return torch.zeros(m.shape, dtype=torch.float32, device=token_rewards.device)
    prev = torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], dim=1)
    turn = ((m & ~prev).long().cumsum(-1) - 1).clamp_min(0)  # turn index of each token (0-based)
    K = int(turn.max()) + 1
    per_turn = torch.zeros((m.shape[0], K), dtype=torch.float32, device=m.device)
    per_turn.scatter_add_(1, turn, token_rewards.float() * m)
    g = torch.zeros_like(per_turn)
    running = torch.zeros_like(per_turn[:, 0])
    for k in range(K - 1, -1, -1):
        running = per_turn[:, k] + gamma * running
        g[:, k] = running
    return g.gather(1, turn) * m


@ADVANTAGE_ESTIMATORS.register("turn_discounted", needs=EstimatorNeeds(groups=True, token_rewards=True, turn_rewards=True))
def turn_discounted_advantages(rewards, group_ids, *, eps=1e-6, baseline_rewards=None, values=None,
                               token_rewards=None, mask=None, gamma=1.0, lam=1.0):
    """(N, T): (G_turn - group mean of G_0) / (group std of G_0 + eps), G the per-turn discounted
    return (`turn_returns`) of token_rewards + the outcome reward at the last policy token, G_0 each
    episode's return from its first turn.

    Turn-level credit without a critic (SWEET-RL, Zhou et al. 2025, learns a turn-level advantage
    with a privileged critic; here the group of episodes on one env seed is the baseline, as GRPO).
    A turn's tokens are credited with the rewards of that turn and the discounted later ones, not
    with rewards earned before it. With gamma = 1 and only an outcome reward (at the last turn) every
    token gets the episode's reward and this is `grpo_advantages` spread over the policy tokens
    (tested). `mask` is the policy-token mask (required): its runs of 1s are the turns."""
    r = _check_rewards(rewards, group_ids)
    if mask is None:
        raise ValueError("turn_discounted needs mask (N, T): the policy-token mask whose runs are the turns")
    m = mask.bool()
    stream = torch.zeros(m.shape, dtype=torch.float32, device=r.device) if token_rewards is None else token_rewards.float()
    stream = stream * m + r.unsqueeze(-1) * _last_token_onehot(m)
    g = turn_returns(stream, m, gamma)
    first = m.long().argmax(-1)  # the first policy token of each row: its return is the episode's
    g0 = g.gather(1, first.unsqueeze(1)).squeeze(1) * m.any(-1)
    mean, std, size = group_stats(g0, group_ids)
    adv = (g - mean.unsqueeze(-1)) / (std.unsqueeze(-1) + eps)
    adv = torch.where(size.unsqueeze(-1) > 1, adv, torch.zeros_like(adv))
    return adv * m, g


# ----------------------------------------------------------------------------------------------
# token-level: GAE


@ADVANTAGE_ESTIMATORS.register("gae", needs=EstimatorNeeds(token_rewards=True, value_model=True))
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


# ----------------------------------------------------------------------------------------------
# process supervision: per-step rewards -> token-level advantages (beside an estimator's outcome term)


def process_advantages(step_rewards: torch.Tensor, step_mask: torch.Tensor, group_ids: torch.Tensor, *,
                       mask: torch.Tensor | None = None, eps: float = 1e-6, scale_by_std: bool = True) -> torch.Tensor:
    """(N, T) process-supervision advantages from per-step rewards placed at each step's last token.

    Shao et al. 2024 ("DeepSeekMath", Sec. 4.1.3, "Process Supervision RL with GRPO"): the rewards of
    all steps of all completions of one prompt (a group) are normalized together,
    ``r~ = (r - mean_g) / std_g``, and a token's advantage is the sum of the normalized rewards of the
    steps that end at or after it: ``A_t = sum_{k : end_k >= t} r~_k``.

    step_rewards (N, T) float: a step's reward at its last token (other positions are ignored, even
    if not finite); step_mask (N, T) bool: True at step-end tokens; group_ids (N,) long;
    mask (N, T): valid tokens (0 elsewhere in the output).

    Departures / choices:
    - ``std + eps`` in the denominator, unbiased (Bessel) std as in `group_stats`; a group with fewer
      than two steps, or with all step rewards equal, gets 0 (no comparison is possible).
    - ``scale_by_std=False`` only subtracts the group mean (the Dr. GRPO choice, for ``dr_grpo``).
    - A completion with no step contributes nothing to its group's statistics and gets 0; tokens after
      a completion's last step end (e.g. its EOS) get 0.
    - The paper uses this as the whole advantage; `trainers.rl` adds it to the outcome advantage,
      weighted by ``rl.prm_coef``.
    """
    if step_rewards.dim() != 2 or step_mask.shape != step_rewards.shape or group_ids.shape != step_rewards.shape[:1]:
        raise ValueError(f"step_rewards {tuple(step_rewards.shape)} and step_mask {tuple(step_mask.shape)} must be "
                         f"(N, T) and group_ids {tuple(group_ids.shape)} (N,)")
    sm = step_mask.bool()
    r = torch.where(sm, step_rewards.float(), torch.zeros((), dtype=torch.float32, device=step_rewards.device))
    _, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, sm.sum(-1).to(r.dtype))
    total = torch.zeros_like(count).index_add_(0, inv, r.sum(-1))
    mean = (total / count.clamp_min(1.0))[inv].unsqueeze(-1)
    centered = torch.where(sm, r - mean, torch.zeros_like(r))
    if scale_by_std:
        sq = torch.zeros_like(count).index_add_(0, inv, (centered**2).sum(-1))
        std = (sq / (count - 1).clamp_min(1.0)).sqrt()[inv].unsqueeze(-1)
        centered = centered / (std + eps)
    adv = centered.flip(-1).cumsum(-1).flip(-1)  # sum over steps ending at or after t
    return adv if mask is None else adv * mask.to(adv.dtype)


def compute_advantages(name: str, rewards: torch.Tensor, group_ids: torch.Tensor, **kwargs):
    """Look up `name` in ADVANTAGE_ESTIMATORS and call it; computed without autograd."""
    with torch.no_grad():
        return ADVANTAGE_ESTIMATORS.get(name)(rewards, group_ids, **kwargs)
