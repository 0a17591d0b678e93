"""A process reward model as a dense reward for online RL: one reward per step, at the step's last token.

Process supervision as RL reward follows Math-Shepherd (Wang et al. 2024, Sec. 3.4, step-by-step PPO
with the PRM's score at the end of each step) and Lightman et al. 2023. `prm_step_rewards` turns a
PRM's step scores into sparse per-token rewards: the step boundaries come from the rollout's own
token ids (`models.prm.split_token_steps`: a step ends at the first token whose text contains the
separator), so the reward lands on a token the policy actually generated and nothing is re-tokenized
for the trainer; only the PRM reads the step texts (through its own `encode_steps`).

`dense_step_rewards` lays them out as (N, T) tensors over the rollout batch. `trainers.rl` (``rl.prm_model``)
uses them in one of two ways: token-level estimators (GAE, REINFORCE++) get them added to the
token-level reward at the same positions (Math-Shepherd's step-by-step PPO), group estimators (GRPO
family) get `advantages.process_advantages` (DeepSeekMath Sec. 4.1.3) added to the outcome advantage.
Departure: Math-Shepherd uses the raw score; `baseline` (default 0) is subtracted from every step
score, e.g. 0.5 to make a neutral step worth nothing, and `scale` multiplies it.
"""
from __future__ import annotations

from typing import Sequence

import torch

from posttrain.models.prm import split_token_steps

__all__ = ["prm_step_rewards", "dense_step_rewards"]


def prm_step_rewards(
    prm_scorer,
    prompts: Sequence,
    completions: Sequence[str],
    completion_token_ids: Sequence[Sequence[int]],
    tokenizer,
    step_sep: str = "\n",
    *,
    baseline: float = 0.0,
    scale: float = 1.0,
) -> list[list[tuple[int, float]]]:
    """For each completion, ``[(token_index, reward), ...]`` with one entry per step.

    `prm_scorer` has ``score_steps(prompt, steps_list) -> step probabilities`` (e.g.
    `models.prm.PRMScorer`); `token_index` indexes `completion_token_ids[i]` (the step's last token,
    a trailing EOS excluded). `completions` is only checked for length (the steps are decoded from the
    ids). Completions that share a prompt are scored in one call.
    """
    if not (len(prompts) == len(completions) == len(completion_token_ids)):
        raise ValueError(f"prm_step_rewards: {len(prompts)} prompts, {len(completions)} completions, "
                         f"{len(completion_token_ids)} token id lists (must be equal)")
    split = [split_token_steps(tokenizer, list(ids), step_sep) for ids in completion_token_ids]
    out: list[list[tuple[int, float]]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = {}
    keys: list = []
    for i, p in enumerate(prompts):
        j = next((g for g, k in enumerate(keys) if k == p), None)
        if j is None:
            keys.append(p)
            j = len(keys) - 1
        groups.setdefault(j, []).append(i)
    for j, members in groups.items():
        todo = [i for i in members if split[i][0]]
        if not todo:
            continue
        scores = prm_scorer.score_steps(keys[j], [split[i][0] for i in todo])
        for i, sc in zip(todo, scores):
            ends = split[i][1]
            if len(sc) != len(ends):
                raise RuntimeError(f"PRM returned {len(sc)} scores for {len(ends)} steps (completion {i})")
            out[i] = [(e - 1, scale * (float(s) - baseline)) for e, s in zip(ends, sc)]
    return out


def dense_step_rewards(step_rewards: Sequence[Sequence[tuple[int, float]]], num_tokens: int):
    """``[(token_index, reward), ...]`` per completion -> (rewards (N, T) float, step_mask (N, T) bool).

    `rewards` holds each step's reward at its last token and 0 elsewhere; `step_mask` marks those tokens.
    """
    n = len(step_rewards)
    rewards = torch.zeros((n, num_tokens), dtype=torch.float32)
    step_mask = torch.zeros((n, num_tokens), dtype=torch.bool)
    for i, steps in enumerate(step_rewards):
        for t, r in steps:
            if not 0 <= t < num_tokens:
                raise IndexError(f"completion {i}: step reward at token {t}, outside 0..{num_tokens - 1}")
            if step_mask[i, t]:
                raise ValueError(f"completion {i}: two steps end at token {t}")
            rewards[i, t], step_mask[i, t] = float(r), True
    return rewards, step_mask
