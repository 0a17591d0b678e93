"""Environments without a model: tool schemas, tool-call parsing and failures, the built-in envs,
the per-turn discounted estimator."""
import json
import time

import pytest
import torch

from posttrain.advantages import compute_advantages, turn_returns
from posttrain.envs import ENVS, EnvFailure, GameSession, ToolSession, env_factory, env_rows, make_session
from posttrain.envs.calculator import safe_arithmetic
from posttrain.envs.tools import parse_tool_calls, tool_prompt, tool_schema


class Tools:
    def reset(self, **row):
        return "go"

    def add(self, a: int, b: int = 1) -> int:
        """Add two integers.

        Longer text that is not in the schema."""
        return a + b

    def boom(self, x: str) -> str:
        """Always raises."""
        raise RuntimeError("tool exploded")

    def nap(self, seconds: float) -> str:
        """Sleeps."""
        time.sleep(seconds)
        return "awake"

    def big(self) -> str:
        """A long output."""
        return "x" * 10_000

    def reward(self):
        return 0.5


def test_tool_schema_comes_from_signature_and_docstring():
    s = tool_schema("add", Tools().add)["function"]
    assert s["name"] == "add" and s["description"] == "Add two integers."
    assert s["parameters"] == {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                               "required": ["a"]}
    text = tool_prompt(ToolSession(Tools()).tools)
    assert "<tool_call>" in text and '"name": "add"' in text and "reset" not in text and '"reward"' not in text


def test_parse_tool_calls_well_formed_and_malformed():
    text = ('a <tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call> b '
            '<tool_call>{"name": add}</tool_call> <tool_call>[1]</tool_call> '
            '<tool_call>{"name": "add", "arguments": 3}</tool_call> <tool_call>{"name": "x"')
    calls = parse_tool_calls(text)
    assert calls[0] == {"name": "add", "arguments": {"a": 2}}
    assert [c.split(":")[0] for c in calls[1:]] == ["malformed tool call"] * 4
    assert "not JSON" in calls[1] and "missing </tool_call>" in calls[4]
    assert parse_tool_calls("no call here") == []


def _call(session, name, **args):
    return session.step(f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>')


def test_tool_errors_go_back_to_the_model_and_are_counted():
    s = ToolSession(Tools(), timeout_s=2.0, max_output_chars=100)
    s.open({})
    ok = _call(s, "add", a=2, b=3)
    assert not ok.done and '"content": "5"' in ok.observation
    assert "tool exploded" in _call(s, "boom", x="y").observation
    assert "unknown tool 'nope'" in _call(s, "nope").observation
    assert "must be integer" in _call(s, "add", a="two").observation
    assert "bad arguments" in _call(s, "add", c=1).observation
    assert "malformed" in s.step("<tool_call>{oops}</tool_call>").observation
    out = _call(s, "big")
    assert len(json.loads(out.observation[len("<tool_response>"):-len("</tool_response>")])["content"]) == 100
    assert s.counts == {"tool_calls": 7, "tool_errors": 4, "malformed_calls": 1, "truncated_outputs": 1}
    final = s.step("the answer is 5")
    assert final.done and s.final_reward() == 0.5


def test_a_hanging_tool_fails_the_episode():
    s = ToolSession(Tools(), timeout_s=0.2)
    s.open({})
    t0 = time.perf_counter()
    with pytest.raises(EnvFailure) as e:
        _call(s, "nap", seconds=5.0)
    assert e.value.kind == "env_timeout" and time.perf_counter() - t0 < 2.0


class BadGame:
    def __init__(self, mode="raise"):
        self.mode = mode

    def reset(self, seed=None):
        return "start", {}

    def step(self, action):
        if self.mode == "raise":
            raise ValueError("bug in env")
        if self.mode == "garbage":
            return "only two", 1
        return "obs", float("nan"), False, False, {}


@pytest.mark.parametrize("mode,kind", [("raise", "env_error"), ("garbage", "env_garbage"), ("nan", "env_garbage")])
def test_a_broken_game_raises_env_failure(mode, kind):
    s = GameSession(BadGame(mode))
    assert s.open({"seed": 0}) == (None, "start")
    with pytest.raises(EnvFailure) as e:
        s.step("3")
    assert e.value.kind == kind


def test_guess_game_is_seeded_and_rewards_the_right_number():
    make = env_factory("guess:high=8,max_guesses=4")
    rows = env_rows(make, 3, seed=5)
    assert rows == env_rows(make, 3, seed=5) and len({r["seed"] for r in rows}) == 3
    s = make_session(make)
    _, first = s.open(rows[0])
    assert "between 1 and 8" in first
    target = s.env.target
    low = s.step(str(target - 1) if target > 1 else "garbage")
    assert low.reward == 0.0 and not low.done
    win = s.step(f"I guess {target}")
    assert win.reward == 1.0 and win.done
    s2 = make_session(make)
    s2.open(rows[0])
    wrong = str(target % 8 + 1)
    assert [s2.step(wrong).done for _ in range(4)] == [False, False, False, True]  # out of guesses: truncated
    assert s2.total == 0.0


def test_calculator_env_and_safe_arithmetic():
    s = make_session(env_factory("calculator"))
    _, problem = s.open({"seed": 3})
    assert "?" in problem
    answer = s.env.answer
    assert '"content": "21"' in _call(s, "calculator", expression="3 * (4 + 3)").observation
    assert "not allowed" in _call(s, "calculator", expression="__import__('os').getcwd()").observation
    assert s.step(f"#### {int(answer)}").done and s.final_reward() == 1.0
    with pytest.raises(ValueError):
        safe_arithmetic("2 ** 100")
    with pytest.raises(ValueError):
        safe_arithmetic("(1).__class__")
    assert safe_arithmetic("-2 + 7 / 2") == 1.5
    assert set(ENVS.names()) >= {"guess", "calculator"}


def test_unknown_env_option_is_a_config_error():
    from posttrain.config import ConfigError

    with pytest.raises(ConfigError, match="unknown option"):
        env_factory("guess:hgh=3")


# ---------------------------------------------------------------- per-turn credit

def test_turn_returns_discount_per_turn_over_env_holes():
    # two rows; row 0: turn A (2 tokens), env (1), turn B (2 tokens); rewards 1 at A's end, 2 at B's end
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    stream = torch.tensor([[0.0, 1.0, 9.0, 0.0, 2.0], [0.0, 0.0, 3.0, 0.0, 0.0]])
    g = turn_returns(stream, mask, gamma=0.5)
    torch.testing.assert_close(g, torch.tensor([[2.0, 2.0, 0.0, 2.0, 2.0], [3.0, 3.0, 3.0, 0.0, 0.0]]))


def test_turn_discounted_equals_grpo_for_outcome_rewards_at_gamma_1():
    mask = torch.tensor([[1, 0, 1], [1, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    groups = torch.tensor([0, 0, 1, 1])
    outcome = torch.tensor([1.0, 0.0, 0.5, 2.0])
    adv, _ = compute_advantages("turn_discounted", outcome, groups, mask=mask, gamma=1.0)
    grpo, _ = compute_advantages("grpo", outcome, groups)
    torch.testing.assert_close(adv, grpo.unsqueeze(-1) * mask, atol=1e-5, rtol=1e-5)
    # the same outcome given as a stream at the last policy token (rewards 0) is the same thing
    stream = outcome.unsqueeze(-1) * torch.tensor([[0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 1]])
    adv2, _ = compute_advantages("turn_discounted", torch.zeros(4), groups, token_rewards=stream, mask=mask, gamma=1.0)
    torch.testing.assert_close(adv2, adv)


def test_turn_discounted_credits_a_turn_with_its_own_and_later_rewards():
    mask = torch.tensor([[1, 0, 1], [1, 0, 1]], dtype=torch.bool)
    groups = torch.tensor([0, 0])
    # row 0 is rewarded at its second turn, row 1 at its first; both episodes return 1 at gamma 1
    stream = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    adv, g = compute_advantages("turn_discounted", torch.zeros(2), groups, token_rewards=stream, mask=mask, gamma=0.5)
    torch.testing.assert_close(g, torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    # G_0 = [0.5, 1.0]: mean 0.75, std sqrt(0.125)
    std = 0.125 ** 0.5
    want = torch.tensor([[-0.25 / std, 0.0, 0.25 / std], [0.25 / std, 0.0, -0.75 / std]])
    torch.testing.assert_close(adv, want, atol=1e-4, rtol=1e-4)
