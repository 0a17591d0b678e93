"""`--algo` presets for the online RL trainer: each algorithm is a point on a few independent axes.

An `Algorithm` names, for each axis, the registered piece to use:

| axis               | registry / values                                             |
|--------------------|---------------------------------------------------------------|
| estimator          | `posttrain.advantages.ADVANTAGE_ESTIMATORS`                   |
| loss               | `posttrain.losses.policy.POLICY_LOSSES`, or an update kind of `rl_update.UPDATE_KINDS` (``dpo``: online DPO) |
| reducer            | `posttrain.ops.REDUCERS`                                      |
| kl_placement       | ``loss`` (beta * KL term), ``reward`` (-beta * KL in the reward), ``none`` |
| kl_estimator       | `posttrain.ops.KL_ESTIMATORS` (k1 / k2 / k3)                  |
| clip_low/high      | PPO ratio bounds (clip-higher when high > low), dual_clip     |
| dynamic_sampling   | drop zero-variance groups and refill (DAPO)                   |
| overlong_buffer    | DAPO soft overlong punishment over the last N tokens (0: off) |
| mask_truncated     | no loss on completions cut at max_new_tokens                  |
| value_model        | a critic (PPO + GAE)                                          |

What a piece needs from the trainer is declared where it is registered, never listed here by name:
an estimator's `advantages.EstimatorNeeds` (groups, per-token rewards, a greedy baseline rollout, a
critic) and an update kind's `rl_update.UpdateKind` (advantages or not, a reference model, a group
size, whole groups per mini-batch); `Algorithm.update` is the kind the loss selects.

Presets (papers; departures noted):
- grpo: Shao et al. 2024 (DeepSeekMath): group-normalized advantages, PPO clip 0.2, per-sequence
  token mean, k3 KL in the loss with beta 0.04.
- dr_grpo: Liu et al. 2025: no std scaling, sum over tokens / (sequences * max_new_tokens), no KL.
- dapo: Yu et al. 2025: clip-higher (0.2 / 0.28), token-mean, dynamic sampling, soft overlong
  punishment (buffer = a quarter of max_new_tokens), no KL.
- rloo: Ahmadian et al. 2024: leave-one-out baseline, sequence-level REINFORCE (token sum),
  k1 KL in the reward (beta 0.05). Departure: the PPO clip is kept so that several updates per
  rollout stay safe; with one update per rollout it is exactly REINFORCE.
- reinforce_pp: Hu 2025: batch-normalized returns, per-token k1 KL in the reward (beta 0.01),
  PPO clip, token-mean.
- remax: Li et al. 2023: greedy-rollout baseline, token sum, k1 KL in the reward (beta 0.01).
- ppo: Ouyang et al. 2022 / Schulman et al. 2017: GAE (gamma 1, lambda 0.95) with a value model,
  whitened advantages, PPO clip, token-mean, k1 KL in the reward (beta 0.01).
- online_dpo: Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback": per
  prompt, the best and worst sampled completion by reward form a pair (ties are dropped), DPO loss
  (beta 0.1) against the frozen initial policy. Departure: the reward function replaces the AI
  annotator.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from posttrain.config import ConfigError
from posttrain.advantages import ADVANTAGE_ESTIMATORS, estimator_needs
from posttrain.ops import KL_ESTIMATORS, REDUCERS
from posttrain.trainers.rl_update import UpdateKind, update_kind


@dataclass(frozen=True)
class Algorithm:
    estimator: str = "grpo"
    loss: str = "ppo"
    reducer: str = "seq-mean-token-mean"
    kl_placement: str = "loss"
    kl_estimator: str = "k3"
    kl_coef: float = 0.04
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False
    overlong_buffer: int = 0  # tokens; 0 = no soft overlong punishment
    overlong_penalty: float = 1.0  # the punishment at max_new_tokens
    mask_truncated: bool = False
    value_model: bool = False
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.5
    value_clip: float = 0.2
    whiten_advantages: bool = False
    dpo_beta: float = 0.1

    @property
    def update(self) -> UpdateKind:
        """The update kind `loss` selects (policy gradient, or online DPO for ``dpo``)."""
        return update_kind(self.loss)

    @property
    def needs_reference(self) -> bool:
        return self.update.reference or (self.kl_placement != "none" and self.kl_coef > 0)

    def validate(self) -> None:
        kind = self.update
        if kind.losses is not None:
            kind.losses.get(self.loss)
        if kind.advantages:
            ADVANTAGE_ESTIMATORS.get(self.estimator)
            if estimator_needs(self.estimator).value_model and not self.value_model:
                raise ConfigError(f"the {self.estimator} estimator needs value_model=true (a critic)")
        REDUCERS.get(self.reducer)
        KL_ESTIMATORS.get(self.kl_estimator)
        if self.kl_placement not in ("loss", "reward", "none"):
            raise ConfigError(f"kl_placement must be loss, reward or none, got '{self.kl_placement}'")
        if self.overlong_buffer < 0 or self.clip_low < 0 or self.clip_high < 0 or self.kl_coef < 0:
            raise ConfigError("overlong_buffer, clip_low, clip_high and kl_coef must be >= 0")


PRESETS: dict[str, dict] = {
    "grpo": dict(estimator="grpo", reducer="seq-mean-token-mean", kl_placement="loss", kl_estimator="k3", kl_coef=0.04),
    "dr_grpo": dict(estimator="dr_grpo", reducer="seq-sum-norm", kl_placement="none", kl_coef=0.0),
    "dapo": dict(estimator="grpo", reducer="token-mean", kl_placement="none", kl_coef=0.0, clip_high=0.28,
                 dynamic_sampling=True, overlong_buffer=-1),  # -1: a quarter of max_new_tokens
    "rloo": dict(estimator="rloo", reducer="seq-mean-token-sum", kl_placement="reward", kl_estimator="k1", kl_coef=0.05),
    "reinforce_pp": dict(estimator="reinforce_pp", reducer="token-mean", kl_placement="reward", kl_estimator="k1", kl_coef=0.01),
    "remax": dict(estimator="remax", reducer="seq-mean-token-sum", kl_placement="reward", kl_estimator="k1", kl_coef=0.01),
    "ppo": dict(estimator="gae", reducer="token-mean", kl_placement="reward", kl_estimator="k1", kl_coef=0.01,
                value_model=True, whiten_advantages=True),
    "online_dpo": dict(estimator="grpo", loss="dpo", kl_placement="none", kl_coef=0.0, dpo_beta=0.1),
}


def resolve_algorithm(algo: str, overrides: dict, max_new_tokens: int) -> Algorithm:
    """The preset `algo` with every non-None entry of `overrides` (field -> value) applied on top."""
    if algo not in PRESETS:
        raise ConfigError(f"unknown --algo '{algo}'; known: {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(Algorithm)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown algorithm axes {sorted(unknown)}; known: {sorted(known)}")
    values = {**PRESETS[algo], **{k: v for k, v in overrides.items() if v is not None}}
    if values.get("overlong_buffer") == -1:
        values["overlong_buffer"] = max(1, max_new_tokens // 4)
    alg = Algorithm(**values)
    alg.validate()
    return alg
