"""combine_rewards: weighting, and failures (raise / NaN / None / timeout) counted and scored 0."""
import math
import time

import pytest
import torch

from posttrain.rewards import FAILURE_SCORE, combine_rewards, exact_match, math_reward


def ones(prompts, completions, **columns):
    return [1.0] * len(completions)


def raises(prompts, completions, **columns):
    raise RuntimeError("boom")


def nan_on_b(prompts, completions, **columns):
    return [math.nan if c == "b" else 2.0 for c in completions]


def fails_on_c(prompts, completions, **columns):
    if "c" in completions:
        raise ValueError("bad item")
    return [0.5] * len(completions)


def wrong_length(prompts, completions, **columns):
    return [1.0]


def uses_column(prompts, completions, *, bonus, **columns):
    return [float(b) for b in bonus]


def test_weights_and_columns():
    out = combine_rewards([(ones, 0.5), (uses_column, 2.0)], ["p"] * 3, ["a", "b", "c"], {"bonus": [0, 1, 2]})
    torch.testing.assert_close(out.total, torch.tensor([0.5, 2.5, 4.5]))
    assert out.weights == {"ones": 0.5, "uses_column": 2.0}
    assert out.num_failed == 0


def test_failures_are_counted_and_scored_zero():
    funcs = [(ones, 1.0), (nan_on_b, 1.0), (fails_on_c, 1.0)]
    out = combine_rewards(funcs, ["p"] * 3, ["a", "b", "c"], max_workers=3)
    assert FAILURE_SCORE == 0.0
    assert out.errors == {"ones": 0, "nan_on_b": 0, "fails_on_c": 1}
    assert out.nans["nan_on_b"] == 1
    torch.testing.assert_close(out.scores["nan_on_b"], torch.tensor([2.0, 0.0, 2.0]))
    torch.testing.assert_close(out.scores["fails_on_c"], torch.tensor([0.5, 0.5, 0.0]))  # item-by-item retry
    assert out.valid["fails_on_c"].tolist() == [True, True, False]
    assert out.first_errors == {"fails_on_c": "ValueError: bad item"}
    torch.testing.assert_close(out.total, torch.tensor([3.5, 1.5, 3.0]))
    assert out.num_failed == 1 + 1


@pytest.mark.parametrize("fn, message", [
    (raises, r"'raises' failed on all 3 completions of a batch: RuntimeError: boom"),
    (wrong_length, r"'wrong_length' failed on all 3 completions of a batch: returned 1 values for 3 completions"),
    (lambda prompts, completions, **_: ["x"] * len(completions), r"'<lambda>' .*returned 'x' \(str\), not a number"),
])
def test_a_function_failing_on_every_item_is_an_error(fn, message):
    from posttrain.errors import UserError
    from posttrain.rewards import RewardError

    with pytest.raises(RewardError, match=message) as info:
        combine_rewards([(ones, 1.0), (fn, 1.0)], ["p"] * 3, ["a", "b", "c"])
    assert isinstance(info.value, UserError)  # the CLI prints it as one line, exit 2
    if fn is raises:
        assert isinstance(info.value.__cause__, RuntimeError)  # --debug shows the reward's own traceback


def test_missing_answers_and_math_reward_in_threads():
    # math-verify's signal-based timeout cannot run off the main thread; this must still score
    funcs = [(math_reward, 1.0), (exact_match, 0.5)]
    out = combine_rewards(funcs, ["p"] * 3, [r"\boxed{1/2}", "no idea", r"\boxed{7}"], {"answer": ["0.5", "3", "7"]})
    assert out.missing == {"math_reward": 1, "exact_match": 0}
    assert out.errors == {"math_reward": 0, "exact_match": 0}
    torch.testing.assert_close(out.scores["math_reward"], torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(out.scores["exact_match"], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out.total, torch.tensor([1.0, 0.0, 1.5]))


def test_timeout_is_counted():
    def slow(prompts, completions, **columns):
        time.sleep(1.0)
        return [1.0] * len(completions)

    out = combine_rewards([(slow, 1.0), (ones, 1.0)], ["p"] * 2, ["a", "b"], timeout_s=0.2)
    assert out.timeouts == {"slow": 1, "ones": 0}
    assert out.errors["slow"] == 2
    torch.testing.assert_close(out.total, torch.tensor([1.0, 1.0]))


def test_duplicate_names_and_bad_columns():
    out = combine_rewards([(ones, 1.0), (ones, 1.0)], ["p"], ["a"])
    assert set(out.scores) == {"ones", "ones#2"}
    with pytest.raises(ValueError, match="column 'answer'"):
        combine_rewards([(ones, 1.0)], ["p"], ["a"], {"answer": ["1", "2"]})
