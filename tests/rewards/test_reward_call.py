"""Reward functions are called by keyword (posttrain and TRL signatures), the first failure is shown,
and a hung reward does not keep the process alive."""
import functools
import subprocess
import sys
import textwrap
import time

import torch

from posttrain.rewards import call_reward, combine_rewards, math_reward

PROMPTS, COMPLETIONS = ["1+1=", "2+2="], ["2", "5"]
COLUMNS = {"answer": ["2", "4"], "level": [1, 2], "completion_ids": [[7], [8]]}


def test_trl_style_reward_gets_trl_keywords():
    seen = {}

    def trl_reward(completions, **kwargs):  # TRL GRPOTrainer signature
        seen.update(kwargs, completions=completions)
        return [1.0 if c == a else 0.0 for c, a in zip(completions, kwargs["solution"])]

    out = combine_rewards([(trl_reward, 1.0)], PROMPTS, COMPLETIONS, COLUMNS)
    assert out.total.tolist() == [1.0, 0.0]
    assert seen["prompts"] == PROMPTS and seen["completions"] == COMPLETIONS
    assert seen["completion_ids"] == [[7], [8]] and seen["level"] == [1, 2]
    assert seen["answer"] == seen["solution"] == seen["ground_truth"] == ["2", "4"]


def test_signatures_without_kwargs_get_only_what_they_name():
    def named(completions, answer):  # no **kwargs: extra columns must not be passed
        return [float(c == a) for c, a in zip(completions, answer)]

    def posttrain_style(prompts, completions, *, answer, **_):
        assert prompts == PROMPTS
        return [float(c == a) for c, a in zip(completions, answer)]

    positional = lambda p, c: [float(len(x)) for x in c]  # noqa: E731 (other names: by position)

    class Scorer:
        def __call__(self, prompts, completions, **columns):
            return [0.5] * len(completions)

    def scaled(completions, answer, scale, **kwargs):
        return [scale * float(c == a) for c, a in zip(completions, answer)]

    funcs = [(named, 1.0), (posttrain_style, 1.0), (positional, 1.0), (Scorer(), 1.0),
             (functools.partial(scaled, scale=3.0), 1.0), (math_reward, 1.0)]
    out = combine_rewards(funcs, PROMPTS, COMPLETIONS, COLUMNS)
    assert out.errors == dict.fromkeys(out.errors, 0)
    assert out.scores["named"].tolist() == [1.0, 0.0] and out.scores["posttrain_style"].tolist() == [1.0, 0.0]
    assert out.scores["<lambda>"].tolist() == [1.0, 1.0] and out.scores["Scorer"].tolist() == [0.5, 0.5]
    assert out.scores["scaled"].tolist() == [3.0, 0.0] and out.scores["math_reward"].tolist() == [1.0, 0.0]
    assert call_reward(named, PROMPTS, COMPLETIONS, COLUMNS) == [1.0, 0.0]


def test_first_error_is_shown_once_with_name_and_count(capsys):
    def flaky_once_shown(completions, **kwargs):
        if "5" in completions:
            raise KeyError("no such column 'solutions'")
        return [1.0] * len(completions)

    for _ in range(3):
        out = combine_rewards([(flaky_once_shown, 1.0)], PROMPTS, COMPLETIONS, COLUMNS)
        assert out.errors == {"flaky_once_shown": 1}
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("flaky_once_shown") == 1
    assert "failed on 1/2 completions" in err and "KeyError" in err and "no such column 'solutions'" in err


def test_timed_out_reward_is_counted_and_warned(capsys):
    def sleepy_warned(completions, **kwargs):
        time.sleep(2.0)
        return [1.0] * len(completions)

    out = combine_rewards([(sleepy_warned, 1.0)], PROMPTS, COMPLETIONS, COLUMNS, timeout_s=0.2)
    assert out.timeouts == {"sleepy_warned": 1} and out.first_errors == {"sleepy_warned": "timed out after 0.2 s"}
    torch.testing.assert_close(out.total, torch.zeros(2))
    assert "sleepy_warned' timed out after 0.2 s" in " ".join(capsys.readouterr().err.split())


def test_hung_reward_does_not_block_exit():
    script = textwrap.dedent("""
        import time
        from posttrain.rewards import combine_rewards

        def hangs(completions, **kwargs):
            time.sleep(60)
            return [1.0] * len(completions)

        out = combine_rewards([(hangs, 1.0)], ["p"], ["c"], timeout_s=0.5)
        print("timeouts", out.timeouts["hangs"], flush=True)
    """)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "timeouts 1" in proc.stdout
    assert elapsed < 8.0, f"the process waited {elapsed:.1f} s for the hung reward thread"
