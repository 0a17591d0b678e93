"""`posttrain eval --env`: success rate, turns and counts of a policy's episodes, checked against
scripted policies whose scores are known (binary search always wins the guessing game; always
guessing 1 wins only when the number is 1), an environment that raises, and the CLI."""
import json
import re

import pytest

from posttrain.cli import main
from posttrain.configs import EvalSampling
from posttrain.envs.guess import GuessEnv
from posttrain.eval.env import HELD_OUT_SEED, evaluate_env
from posttrain.models import load_model_and_tokenizer
from posttrain.rollout import Completion
from posttrain.rollout.multiturn import EpisodeLimits

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "tiny-llama:d=32,l=2,h=2"


class Scripted:
    """An engine whose every turn is `policy(replies so far)`, replies read from the decoded history."""

    def __init__(self, tok, policy):
        self.tok, self.policy = tok, policy

    def generate(self, inputs, params):
        out = []
        for ids in inputs:
            text = self.tok.decode(ids, skip_special_tokens=True)
            replies = re.findall(r"Higher|Lower", text)
            ans = self.tok(str(self.policy(replies)), add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            out.append([Completion(ans, [0.0] * len(ans), "stop")])
        return out


def binary_search(replies, high=8):
    lo, hi = 1, high
    for r in replies:
        g = (lo + hi) // 2
        lo, hi = (g + 1, hi) if r == "Higher" else (lo, g - 1)
    return (lo + hi) // 2


def guesses_needed(target, high=8):
    lo, hi, n = 1, high, 0
    while True:
        n += 1
        g = (lo + hi) // 2
        if g == target:
            return n
        lo, hi = (g + 1, hi) if g < target else (lo, g - 1)


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer(MODEL, seed=0)


def _greedy_only():
    return EvalSampling(n=0, max_new_tokens=4)


def test_binary_search_wins_every_game_in_the_turns_it_needs(tiny, tmp_path):
    model, tok = tiny
    res = evaluate_env(model, tok, "guess:high=8,max_guesses=4", _greedy_only(), EpisodeLimits(max_turns=4, max_episode_tokens=512),
                       tmp_path, limit=24, engine=Scripted(tok, binary_search))
    eps = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    targets = [GuessEnv(high=8).reset(e["env_row"]["seed"])[1]["target"] for e in eps]
    assert len(eps) == 24 and len(set(targets)) > 3
    assert [e["env_row"]["seed"] for e in eps] == [HELD_OUT_SEED * 1_000_003 + i for i in range(24)]  # held-out seeds
    m = res["metrics"]
    assert m["success_rate"] == 1.0 and m["reward_mean"] == 1.0
    assert m["turns_mean"] == pytest.approx(sum(guesses_needed(t) for t in targets) / 24)
    assert m["tool_error_rate"] == 0.0 and m["env_error"] == 0


def test_always_guessing_one_wins_only_when_the_number_is_one(tiny, tmp_path):
    model, tok = tiny
    res = evaluate_env(model, tok, "guess:high=4,max_guesses=3", _greedy_only(), EpisodeLimits(max_turns=5, max_episode_tokens=512),
                       tmp_path, limit=40, engine=Scripted(tok, lambda replies: 1))
    eps = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    ones = sum(GuessEnv(high=4).reset(e["env_row"]["seed"])[1]["target"] == 1 for e in eps)
    assert 0 < ones < 40
    m = res["metrics"]
    assert m["success_rate"] == pytest.approx(ones / 40)
    assert m["turns_mean"] == pytest.approx((ones * 1 + (40 - ones) * 3) / 40)  # out of guesses after 3
    # a stricter success bar: no episode reaches reward 2
    strict = evaluate_env(model, tok, "guess:high=4,max_guesses=3", _greedy_only(), EpisodeLimits(max_turns=5, max_episode_tokens=512),
                          tmp_path / "strict", limit=40, success_reward=2.0, engine=Scripted(tok, lambda replies: 1))
    assert strict["metrics"]["success_rate"] == 0.0 and strict["metrics"]["reward_mean"] == m["reward_mean"]


class Broken:
    """A game whose second step raises."""

    def reset(self, seed=None, options=None):
        self.n = 0
        return "Say anything.", {}

    def step(self, action):
        self.n += 1
        if self.n > 1:
            raise RuntimeError("the game broke")
        return "Again.", 1.0, False, False, {}


def test_an_environment_that_raises_is_counted_and_never_a_success(tiny, tmp_path):
    model, tok = tiny
    res = evaluate_env(model, tok, Broken, _greedy_only(), EpisodeLimits(max_turns=3, max_episode_tokens=512), tmp_path,
                       limit=5, engine=Scripted(tok, lambda replies: 7))
    m = res["metrics"]
    assert m["env_error"] == 5 and m["success_rate"] == 0.0
    assert m["reward_mean"] == 0.0  # the failure reward, not the 1.0 the first step paid
    assert m["statuses"] == {"env_error": 5}


def test_eval_env_through_the_cli(tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", "--env", "guess:high=4,max_guesses=3", "--model", MODEL, "--data.limit", "6", "--sampling.n", "2",
                 "--sampling.max_new_tokens", "3", "--episode.max_turns", "3", "--train.progress", "false", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    eps = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in eps] == ["greedy"] * 6 + ["sample0"] * 6 + ["sample1"] * 6
    greedy = [e for e in eps if e["kind"] == "greedy"]
    m = res["metrics"]
    assert m["success_rate"] == sum(e["reward"] >= 1 for e in greedy) / 6
    assert m["success_mean@2"] == sum(e["reward"] >= 1 for e in eps[6:]) / 12
    assert m["turns_mean"] == pytest.approx(sum(e["turns"] for e in greedy) / 6) and 1 <= m["turns_mean"] <= 3
    assert "| success (greedy) |" in (out / "results.md").read_text()
    assert main(["eval", "--env", "guess", "--benchmark", "gsm8k", "--model", MODEL, "--out", str(tmp_path / "both")]) == 2


def test_readme_agent_commands_run(tmp_path, monkeypatch):
    """The README's agent lines as a user types them (shrunk): train on the game, then evaluate the run folder."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- env-examples", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    cmds = [shlex.split(line) for line in block.splitlines() if line.startswith("posttrain")]
    assert [c[1] for c in cmds] == ["rl", "eval"]
    monkeypatch.chdir(tmp_path)
    shrink = {"rl": ["--max-steps", "2", "--data.train_rows", "8", "--rl.prompts_per_step", "2", "--rl.samples_per_prompt", "2",
                     "--rl.max_new_tokens", "3", "--train.progress", "false"],
              "eval": ["--data.limit", "4", "--sampling.n", "0", "--sampling.max_new_tokens", "3"]}
    for words in cmds:
        words = [MODEL if w == "tiny-llama" else w for w in words[1:]]
        assert main([*words, *shrink[words[0]]]) == 0, words
    res = json.loads((tmp_path / "runs" / "eval-guess" / "results.json").read_text())
    assert res["metrics"]["episodes"] == 4 and res["model"] == "runs/rl-guess"
