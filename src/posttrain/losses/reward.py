"""Reward-model losses: Bradley-Terry for outcome reward models, per-step BCE for process reward models.

Papers:
- ``bradley_terry_loss``: Ouyang et al. 2022, "Training language models to follow instructions with
  human feedback" (InstructGPT), Eq. 1, -log sigma(r(x, y_w) - r(x, y_l)); the optional margin m is
  Llama 2's (Touvron et al. 2023, Eq. 2), -log sigma(r_w - r_l - m); the centering term
  center_coef * (r_w + r_l)^2 is Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles
  Mitigate but do not Eliminate Reward Hacking", as TRL's ``center_rewards_coefficient``.
- ``prm_step_loss``: Lightman et al. 2023, "Let's Verify Step by Step" (hard per-step labels) and
  Wang et al. 2024, "Math-Shepherd" (soft labels: the fraction of rollouts from the step that reach
  the right answer), as per-step binary cross-entropy.

Departures:
- Both return unreduced losses (per pair / per step) and leave the averaging to ``ops.reduce``;
  TRL averages inside. The per-pair centering term equals TRL's once averaged over pairs.
- The PRM takes one logit per step (log-odds that the step is correct). Math-Shepherd reads it
  from two vocabulary logits ("+" vs "-"); pass their difference to get the same loss.
- Labels outside [0, 1] are not checked (checking would sync the device); masked-out steps may hold
  anything (e.g. -100) and get zero loss and zero gradient.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Optional[Union[Tensor, float]] = None,
    center_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pair -log sigma(r_w - r_l - margin) + center_coef * (r_w + r_l)^2.

    chosen_rewards, rejected_rewards: (B,) scalar rewards of the chosen / rejected completions.
    margin: None, a float, or (B,) per-pair margins (Llama 2's preference-strength margin).
    Returns loss (B,) and stats: accuracy (r_w > r_l), margin (mean r_w - r_l), rewards/chosen,
    rewards/rejected, and center (mean (r_w + r_l)^2).
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} must have the same shape"
        )
    diff = chosen_rewards - rejected_rewards
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits)
    center = (chosen_rewards + rejected_rewards) ** 2
    if center_coef:
        loss = loss + center_coef * center
    d = diff.detach()
    stats = {
        "accuracy": (d > 0).to(d.dtype).mean(),
        "margin": d.mean(),
        "rewards/chosen": chosen_rewards.detach().mean(),
        "rewards/rejected": rejected_rewards.detach().mean(),
        "center": center.detach().mean(),
    }
    return loss, stats


def prm_step_loss(
    step_logits: Tensor, step_labels: Tensor, step_mask: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-step binary cross-entropy of a process reward model.

    step_logits: (B, S) log-odds that each step is correct.
    step_labels: (B, S) hard {0, 1} (bool or int) or soft float labels in [0, 1].
    step_mask: (B, S) bool, True at real steps.
    Returns loss (B, S), zero where the mask is False, and stats: accuracy (masked mean of
    [sigma(logit) > 0.5] == [label > 0.5]), positive_rate (masked mean of label > 0.5), num_steps.
    """
    if not (step_logits.shape == step_labels.shape == step_mask.shape):
        raise ValueError(
            f"step_logits {tuple(step_logits.shape)}, step_labels {tuple(step_labels.shape)} and "
            f"step_mask {tuple(step_mask.shape)} must have the same shape"
        )
    mask = step_mask.bool()
    labels = torch.where(mask, step_labels.to(step_logits.dtype), torch.zeros_like(step_logits))
    per_step = F.binary_cross_entropy_with_logits(step_logits, labels, reduction="none")
    loss = torch.where(mask, per_step, torch.zeros_like(per_step))
    num_steps = mask.sum().to(step_logits.dtype)
    denom = num_steps.clamp(min=1)
    predicted = step_logits.detach() > 0  # sigma(logit) > 0.5
    target = labels > 0.5
    correct = (predicted == target) & mask
    stats = {
        "accuracy": correct.sum().to(step_logits.dtype) / denom,
        "positive_rate": (target & mask).sum().to(step_logits.dtype) / denom,
        "num_steps": num_steps,
    }
    return loss, stats
