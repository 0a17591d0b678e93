"""Math answer extraction, equivalence, and the 1/0/None math reward."""
import pytest

from posttrain.rewards.math import answers_match, extract_answer, extract_boxed, math_reward


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{\frac{1}{\sqrt{2}}}.", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{1} then revised: \boxed{ {a}_{b} + \{x\} }", r"{a}_{b} + \{x\}"),
        (r"\fbox{42}", "42"),
        ("Natalia sold 48/2 = 24 clips.\n#### 1,234", "1234"),
        ("<think>2+2 is 4, or 5?</think> <answer> 4 </answer>", "4"),
        ("<answer>\\boxed{7}</answer> later 9", "7"),  # boxed wins
        ("first 3, then 4.5, finally -12.", "-12"),
        ("the ratio is 3/4", "3/4"),
        ("I got 1,000,000 apples", "1000000"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_unclosed_boxed_falls_back():
    assert extract_boxed(r"\boxed{12") is None
    assert extract_answer(r"\boxed{12") == "12"  # last-number fallback


@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("1/2", "0.5", True),
        (r"\frac{1}{2}", "0.5", True),
        ("0.5", r"\frac12", True),
        ("1,000", "1000", True),
        (r"\sqrt{2}", "2^{1/2}", True),
        ("3.0", "3", True),
        ("3", "4", False),
        ("0.3333", "1/3", False),
        ("abc", "abd", False),
        (None, "1", False),
    ],
)
def test_answers_match(pred, gold, same):
    assert answers_match(pred, gold) is same


def test_math_reward_scores_and_no_answer():
    completions = [r"\boxed{0.5}", "so #### 72", "I give up", r"\boxed{3}", "the answer is 72"]
    gold = ["1/2", "Work... #### 72", "5", "4", "72"]
    assert math_reward(["p"] * 5, completions, answer=gold) == [1.0, 1.0, None, 0.0, 1.0]
