"""Verifiable reward functions and the parallel, failure-counting combiner.

Interface (see `base`): called by keyword, ``fn(prompts=, completions=, answer=, **columns) -> list[float | None]``;
posttrain-style ``fn(prompts, completions, **columns)`` and TRL-style ``fn(completions, **kwargs)`` both work.
"""
from posttrain.rewards.base import (
    FAILURE_SCORE, RewardError, RewardFn, RewardOutput, call_reward, combine_rewards, reward_name,
)
from posttrain.rewards.countdown import countdown_reward
from posttrain.rewards.exact import exact_match
from posttrain.rewards.format import format_reward, make_format_reward
from posttrain.rewards.length import (
    make_cosine_length_reward,
    make_overlong_penalty,
    make_repetition_penalty,
    make_target_length_reward,
)
from posttrain.rewards.math import answers_match, extract_answer, math_reward

__all__ = [
    "RewardFn",
    "RewardOutput",
    "RewardError",
    "call_reward",
    "FAILURE_SCORE",
    "combine_rewards",
    "reward_name",
    "math_reward",
    "extract_answer",
    "answers_match",
    "exact_match",
    "format_reward",
    "make_format_reward",
    "countdown_reward",
    "make_cosine_length_reward",
    "make_repetition_penalty",
    "make_overlong_penalty",
    "make_target_length_reward",
]
