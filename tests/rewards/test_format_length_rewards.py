"""Format reward and the length-aware rewards (cosine, repetition, overlong, L1)."""
import math

import pytest

from posttrain.rewards.exact import exact_match
from posttrain.rewards.format import format_reward, make_format_reward
from posttrain.rewards.length import (
    cosine_scale,
    make_cosine_length_reward,
    make_overlong_penalty,
    make_repetition_penalty,
    make_target_length_reward,
)


def test_format_reward():
    good = "<think>\nlet me see\n</think>\n<answer>42</answer>\n"
    bad = [
        "<answer>42</answer>",
        "<think>a</think><answer>1</answer><answer>2</answer>",
        "<think>a</think> stray <answer>1</answer>",
        "<answer>1</answer><think>a</think>",
        "<think>a <think> b</think><answer>1</answer>",
    ]
    assert format_reward([""] * 6, [good] + bad) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    in_prompt = make_format_reward(think_in_prompt=True)
    assert in_prompt(["", ""], ["reasoning</think><answer>1</answer>", good]) == [1.0, 0.0]


def test_exact_match():
    out = exact_match(["p"] * 4, ["<answer> B </answer>", r"\boxed{\text{Paris}}", "Paris.", "C"],
                      answer=["b", "paris", "Paris", None])
    assert out == [1.0, 1.0, 1.0, None]


def _cos(t, T, r0, rL):
    return rL + 0.5 * (r0 - rL) * (1 + math.cos(math.pi * t / T))


def test_cosine_length_reward_hand_values():
    assert cosine_scale(0, 10, 2.0, 1.0) == pytest.approx(2.0)
    assert cosine_scale(10, 10, 2.0, 1.0) == pytest.approx(1.0)
    assert cosine_scale(5, 10, 2.0, 1.0) == pytest.approx(1.5)
    fn = make_cosine_length_reward(10)
    comps = [r"\boxed{4}", r"a b c d \boxed{4}", r"\boxed{5}", "w " * 6 + r"\boxed{5}", "w " * 12 + r"\boxed{4}"]
    out = fn(["p"] * 5, comps, answer=["4"] * 5)
    expected = [_cos(1, 10, 2, 1), _cos(5, 10, 2, 1), _cos(1, 10, -10, 0), _cos(7, 10, -10, 0), -10.0]
    assert out == pytest.approx(expected, abs=1e-6)
    assert out[0] > out[1] and out[3] > out[2]  # shorter correct better, longer wrong less bad
    # token lengths from the rollout take precedence over word counts
    out = fn(["p"] * 2, [r"\boxed{4}", r"\boxed{4}"], answer=["4", "4"], completion_lengths=[0, 10])
    assert out == pytest.approx([2.0, -10.0])


def test_repetition_penalty():
    fn = make_repetition_penalty(ngram_size=2, max_penalty=-1.0)
    # "a b a b a": bigrams ab ba ab ba -> 2 unique of 4 -> -(1 - 0.5)
    assert fn(["p"] * 3, ["a b a b a", "a b c d", "a"]) == pytest.approx([-0.5, 0.0, 0.0])
    with pytest.raises(ValueError):
        make_repetition_penalty(max_penalty=1.0)


def test_overlong_penalty():
    fn = make_overlong_penalty(max_len=10, cache_len=4)
    comps = ["w " * n for n in (3, 6, 8, 10, 11)]
    assert fn(["p"] * 5, comps) == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])


def test_target_length_reward():
    exact = make_target_length_reward(mode="exact", alpha=0.01)
    out = exact(["p"] * 2, [r"\boxed{4}", r"\boxed{5}"], answer=["4", "4"], target_length=[50, 50],
                completion_lengths=[40, 70])
    assert out == pytest.approx([1.0 - 0.1, 0.0 - 0.2])
    cap = make_target_length_reward(mode="max", alpha=0.01, delta=0.5)
    out = cap(["p"] * 3, [r"\boxed{4}"] * 2 + [r"\boxed{5}"], answer=["4"] * 3, target_length=[50] * 3,
              completion_lengths=[40, 100, 10])
    assert out == pytest.approx([0.6, 0.0, 0.0])
