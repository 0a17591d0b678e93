"""Countdown: each number exactly once, only + - * / ( ), safe ast evaluation."""
from fractions import Fraction

import pytest

from posttrain.rewards.countdown import check_countdown, countdown_reward, evaluate_equation, extract_equation


@pytest.mark.parametrize(
    "equation, nums, target, ok",
    [
        ("(25 - 5) * 3 + 4", [3, 4, 5, 25], 64, True),
        ("4 + 3 * (25 - 5)", [25, 5, 4, 3], 64, True),
        ("(6 / 4) * 4 * 2", [4, 6, 4, 2], 12, True),  # exact fractions, repeated numbers
        ("(25 - 5) * 3", [3, 4, 5, 25], 60, False),  # 4 unused
        ("(25 - 5) * 3 + 4 + 4", [3, 4, 5, 25], 68, False),  # 4 reused
        ("(25 - 5) * 3 + 4", [3, 4, 5, 25], 63, False),  # wrong value
        ("3 / (5 - 5) + 4", [3, 5, 5, 4], 4, False),  # division by zero
        ("3 ** 2", [3, 2], 9, False),  # power not allowed
        ("-3 + 5", [3, 5], 2, False),  # unary minus not allowed
        ("1.5 * 2", [1, 5, 2], 3, False),  # float literal
        ("__import__('os')", [1], 1, False),
        ("abs(3)", [3], 3, False),
        ("(3 + 5", [3, 5], 8, False),  # syntax error
    ],
)
def test_check_countdown(equation, nums, target, ok):
    assert check_countdown(equation, nums, target) is ok


def test_evaluate_equation_is_exact():
    value, leaves = evaluate_equation("1 / 3 + 2 / 3")
    assert value == Fraction(1) and leaves == [1, 3, 2, 3]
    with pytest.raises(ZeroDivisionError):
        evaluate_equation("1 / (2 - 2)")


def test_extract_equation():
    assert extract_equation("think...\n<answer>(1 + 2) * 3 = 9</answer>") == "(1 + 2) * 3"
    assert extract_equation("so:\n 7 * 6 \n") == "7 * 6"
    assert extract_equation("   \n") is None


def test_countdown_reward():
    completions = ["<answer>(25-5)*3+4</answer>", "<answer>25*5</answer>", "", "<answer>3/(5-5)+4</answer>"]
    out = countdown_reward(["p"] * 4, completions, nums=[[3, 4, 5, 25]] * 2 + [[1]] + [[3, 5, 5, 4]],
                           target=[64, 125, 1, 4])
    assert out == [1.0, 0.0, None, 0.0]
