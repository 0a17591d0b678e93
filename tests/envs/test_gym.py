"""The gymnasium adapter and its built-ins (frozenlake, blackjack): observation texts against the raw
gymnasium env, action parsing edge cases, unreadable actions (not played, told, counted), seeding,
rollouts whose env tokens have mask 0, `posttrain eval --env frozenlake`, the example script and the
README's custom-environment block."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.config import ConfigError
from posttrain.envs import ENVS, env_factory, make_session
from posttrain.envs.gym import GymEnv, choice_parser
from posttrain.envs.gym_games import MOVES, BlackjackEnv, FrozenLakeEnv
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.rollout.multiturn import EpisodeLimits, run_episodes
from turn_script import TurnScript

gym = pytest.importorskip("gymnasium")  # in the `test` extra; `posttrain[agents]` for users
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama:d=32,l=2,h=2"
START = "Frozen lake. Walk from S to the goal G over the ice F; a hole H ends the game. P is you. Reply with one move: left, down, right or up."


def test_posttrain_imports_without_gymnasium_and_the_adapter_names_the_extra(monkeypatch):
    code = ("import sys, posttrain, posttrain.envs, posttrain.envs.gym; from posttrain.envs import env_factory; "
            "env_factory('frozenlake'); assert 'gymnasium' not in sys.modules, 'imported gymnasium'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium now raises ImportError
    for build in (FrozenLakeEnv, BlackjackEnv, lambda: GymEnv("CartPole-v1")):
        with pytest.raises(ConfigError, match=r"needs gymnasium: pip install 'posttrain\[agents\]'"):
            build()


@pytest.mark.parametrize("text, want", [
    ("left", 0), ("I go DOWN", 1), ("up, no wait: right", 2), ("Action: 3", 3), ("action: up. left is a trap", 3),
    ("2", 2), ("move 1 then 3", 3), ("go east", 2), ("", None), ("uphill, rightly", None), ("-1", None), ("1.5", None),
    ("9", None), ("Action: 9", 9),  # out of range: not an action, unless explicit (the adapter then says so)
])
def test_frozenlake_parser(text, want):
    assert choice_parser(MOVES, {"east": 2})(text) == want


@pytest.mark.parametrize("text, want", [
    ("hit", 1), ("Stick.", 0), ("I'll stand", 0), ("hit me... no, stay", 0), ("Action: 1", 1), ("0", 0),
    ("my sum is 21", None), ("I stick at 21", 0), ("hitting", None), ("sticks", None), ("Action: hit, not stick", 1),
])
def test_blackjack_parser(text, want):
    assert BlackjackEnv().extract_action(text) == want


def test_frozenlake_texts_and_a_winning_path():
    env = FrozenLakeEnv()
    text, _ = env.reset(seed=0)
    assert text == f"{START}\nYou are at row 1, column 1.\nPFFF\nFHFH\nFFFH\nHFFG"
    assert env.step("left")[:4] == ("You hit the edge. You are at row 1, column 1.\nPFFF\nFHFH\nFFFH\nHFFG", 0.0, False, False)
    assert env.step("right")[0] == "You moved right. You are at row 1, column 2.\nSPFF\nFHFH\nFFFH\nHFFG"
    obs, reward, terminated, _, _ = env.step("down")
    assert (obs, reward, terminated) == ("You fell into the hole at row 2, column 2.", 0.0, True)
    env.reset(seed=0)
    outs = [env.step(m) for m in ["down", "down", "right", "right", "down", "right"]]
    assert [o[1] for o in outs] == [0, 0, 0, 0, 0, 1.0] and [o[2] for o in outs] == [False] * 5 + [True]
    assert outs[3][0] == "You moved right. You are at row 3, column 3.\nSFFF\nFHFH\nFFPH\nHFFG"
    assert outs[-1][0] == "You reached the goal!"


def _shows(dealer):
    return "an ace" if dealer == 1 else str(dealer)


def test_blackjack_text_and_reward_are_the_raw_envs():
    raw, env = gym.make("Blackjack-v1"), BlackjackEnv()
    rewards, aces = [], 0
    for seed in range(40):
        (total, dealer, ace), _ = raw.reset(seed=seed)
        text, _ = env.reset(seed=seed)
        assert text == (f"Your sum is {total}, the dealer shows {_shows(dealer)}, "
                        f"{'you have a usable ace' if ace else 'no usable ace'}. Hit or stick?")
        aces += ace
        want = raw.step(0)[1]
        obs, reward, terminated, truncated, _ = env.step("stick")
        assert (reward, terminated, truncated) == (want, True, False)
        verdict = {1.0: "You win: +1.", -1.0: "You lose: -1.", 0.0: "A draw: +0."}[reward]
        assert obs.startswith(f"Your sum is {total}; the dealer has ") and obs.endswith(verdict)
        rewards.append(reward)
    assert {-1.0, 1.0} <= set(rewards) and 0 < aces < 40  # the seeds make different hands


def test_an_unreadable_action_is_not_played_but_told_and_counted():
    env = FrozenLakeEnv()
    env.reset(seed=0)
    env.step("right")
    out = env.step("hmm")
    assert out == ("No action found. Reply left, down, right or up (or 0-3).", 0.0, False, False,
                   {"counts": {"invalid_actions": 1}, "invalid_action": True})
    assert env.env.unwrapped.s == 1  # the game did not move
    assert env.step("Action: 9")[0].startswith("9 is not a valid action. Reply left")
    assert env.step("down")[2] is True and env.invalid_actions == 2  # the hole below (1, 2): the game went on from there
    s = make_session(env_factory("frozenlake"))
    s.open({"seed": 0})
    s.step("nothing")
    s.step("still nothing")
    assert s.counts["invalid_actions"] == 2 and s.total == 0.0
    b = BlackjackEnv()
    b.reset(seed=0)
    assert b.step("what?")[1] == -1.0  # blackjack: stalling costs a lost hand


def test_max_invalid_actions_and_the_default_action_mode():
    env = FrozenLakeEnv(max_invalid_actions=2)
    env.reset(seed=0)
    assert env.step("?")[3] is False
    last = env.step("?")
    assert last[3] is True and "2 unreadable actions: the episode is over" in last[0]
    d = FrozenLakeEnv(on_invalid="default")  # LlamaGym's way: play action 0
    d.reset(seed=0)
    d.step("right")
    obs, _, _, _, info = d.step("??")
    assert obs == "No action found, so I played left.\nYou moved left. You are at row 1, column 1.\nPFFF\nFHFH\nFFFH\nHFFG"
    assert info["counts"] == {"invalid_actions": 1} and d.env.unwrapped.s == 0
    with pytest.raises(ConfigError, match="on_invalid='skip'"):
        FrozenLakeEnv(on_invalid="skip")


def test_seeding_options_and_a_custom_gymnasium_env():
    maps = {}
    for seed in range(6):
        env = env_factory("frozenlake:random_map=1")()
        again = env_factory("frozenlake:random_map=1")()
        assert env.reset(seed=seed) == again.reset(seed=seed)
        maps[seed] = tuple(env.grid)
    assert len(set(maps.values())) > 2 and all(m[-1][-1] == "G" for m in maps.values())

    def walk(seed):
        env = env_factory("frozenlake:is_slippery=true")()
        env.reset(seed=seed)
        return [env.step(m)[0] for m in ["right", "down", "right", "down", "right"]]

    assert walk(3) == walk(3) and len({tuple(walk(s)) for s in range(6)}) > 1  # slippery, but seeded
    big = env_factory("frozenlake:map_name=8x8")()
    assert len(big.reset(seed=0)[0].splitlines()) == 2 + 8
    with pytest.raises(ConfigError, match="is_slippery='maybe'"):
        env_factory("frozenlake:is_slippery=maybe")()
    with pytest.raises(ConfigError, match="unknown option"):
        env_factory("blackjack:slippery=1")
    assert {"frozenlake", "blackjack"} <= set(ENVS)

    # any gymnasium env, by id with make kwargs and user functions (LlamaGym's two pieces)
    cliff = GymEnv("CliffWalking-v1", lambda s: f"square {s}", lambda t: {"up": 0, "right": 1}.get(t.strip()),
                   make_kwargs={"max_episode_steps": 3})
    assert cliff.reset(seed=0)[0] == "square 36"
    assert cliff.step("up")[:2] == ("square 24", -1.0)
    assert cliff.step("jump")[0] == "No action found. Reply with an action number, 0-3."
    with pytest.raises(TypeError, match="not a gymnasium environment"):
        GymEnv(object())


def _check_masks(ep, tok):
    """Policy tokens decode to the model's turns; env tokens (mask 0, logprob 0) hold every env message, in order."""
    policy = [t for t, m in zip(ep.token_ids, ep.token_mask) if m]
    env = [t for t, m in zip(ep.token_ids, ep.token_mask) if not m]
    turns = [m["content"] for m in ep.messages if m["role"] == "assistant"]
    assert tok.decode(policy, skip_special_tokens=True) == "".join(turns) and len(turns) == ep.turns
    assert all(lp == 0.0 for lp, m in zip(ep.logprobs, ep.token_mask) if not m)
    first_user = next(i for i, m in enumerate(ep.messages) if m["role"] == "user")
    obs = [m["content"] for m in ep.messages[first_user + 1:] if m["role"] == "user"]
    env_text = tok.decode(env)
    assert re.fullmatch("".join(r"(?:<\|eos\|>)?<\|user\|>" + re.escape(o) + r"<\|assistant\|>" for o in obs), env_text), env_text
    return obs


@pytest.mark.parametrize("spec", ["frozenlake", "blackjack"])
def test_tiny_model_rollouts_mask_the_env_tokens(tiny, spec):
    model, tok = tiny
    rows = [{"seed": s} for s in range(4)]
    limits = EpisodeLimits(max_turns=3, max_episode_tokens=400, max_tool_output_tokens=200)
    eps = run_episodes(HFEngine(model, tok), tok, [make_session(env_factory(spec)) for _ in rows], rows,
                       SamplingParams(max_new_tokens=6, seed=0), limits)
    for ep in eps:
        obs = _check_masks(ep, tok)
        assert not ep.failed and len(obs) == ep.turns - 1  # the last turn's reply ends the episode unshown
        assert sum(ep.mask()) < len(ep.token_ids)  # env tokens are in the sequence
        told = sum("No action found" in o or "not a valid action" in o for o in obs)
        assert told <= ep.counts["invalid_actions"] <= told + 1  # the last turn's reply is not shown back


def test_a_scripted_winning_episode_in_frozenlake(tiny):
    _, tok = tiny
    eng = TurnScript(tok, ["down", "Down!", "I say: right", "right", "hmm", "down", "right"])
    (ep,) = run_episodes(eng, tok, [make_session(env_factory("frozenlake"))], [{"seed": 0}], SamplingParams(max_new_tokens=20),
                         EpisodeLimits(max_turns=8, max_episode_tokens=2000, max_tool_output_tokens=200))
    assert ep.status == "done" and ep.turns == 7 and ep.reward == 1.0 and ep.turn_rewards == [0.0] * 6 + [1.0]
    assert ep.counts["invalid_actions"] == 1 and ep.token_rewards()[ep.turn_ends[-1]] == 1.0
    obs = _check_masks(ep, tok)
    assert obs[4] == "No action found. Reply left, down, right or up (or 0-3)."
    assert obs[5] == "You moved down. You are at row 4, column 3.\nSFFF\nFHFH\nFFFH\nHFPG"  # "hmm" did not move


def test_eval_env_frozenlake_through_the_cli(tmp_path):
    from posttrain.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "--env", "frozenlake:random_map=1", "--model", MODEL, "--data.limit", "2", "--sampling.n", "0",
                 "--sampling.max_new_tokens", "4", "--episode.max_turns", "2", "--episode.max_tool_output_tokens", "200",
                 "--train.progress", "false", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    eps = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert res["env"] == "frozenlake:random_map=1" and res["metrics"]["num_rows"] == 2 and len(eps) == 2
    for e in eps:
        first = next(m["content"] for m in e["messages"] if m["role"] == "user")
        env = FrozenLakeEnv(random_map=True)
        assert first == env.reset(seed=e["env_row"]["seed"])[0]  # the held-out seed's own map
        assert 1 <= e["turns"] <= 2 and e["counts"].get("invalid_actions", 0) <= e["turns"]
    assert res["metrics"]["success_rate"] == sum(e["reward"] >= 1 for e in eps) / 2


def test_the_llamagym_style_example_runs_shrunk(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gym_blackjack", ROOT / "examples" / "gym_blackjack.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.extract_action("Action: 1") == 1 and mod.extract_action("I have 20, so 0") == 0 and mod.extract_action("?") is None
    result = mod.main(["--steps", "2", "--games-per-step", "2", "--samples", "2", "--max-new-tokens", "4",
                       "--max-turns", "2", "--seeds", "4", "--out", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    steps = re.findall(r"step (\d): mean episode reward ([+-]\d\.\d{3}), turns", printed)
    assert [s for s, _ in steps] == ["1", "2"] and all(-2.0 <= float(r) <= 1.5 for _, r in steps)  # -1 per unreadable turn
    assert f"final mean episode reward {result['env/reward_mean']:+.3f}" in printed
    assert (tmp_path / "run" / "checkpoints" / "step-0000002").exists()


def test_readme_gym_block_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- gym-example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "GymEnv" in block and "gym.Env" in block and 'env="corridor"' in block
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for line in block.splitlines():  # every `print(...)  # expected` comment is what it printed
        if line.startswith("print(") and "  # " in line:
            assert line.split("  # ", 1)[1] in lines, (line, lines[:6])
    assert re.search(r"mean episode reward \d\.\d\d, saved runs/corridor/checkpoints/step-0000002", proc.stdout)


def test_cli_rl_on_blackjack(tmp_path):
    from posttrain.cli import main

    out = tmp_path / "run"
    assert main(["rl", "--rl.env", "blackjack", "--model", MODEL, "--out", str(out), "--max-steps", "2", "--rl.prompts_per_step", "2",
                 "--rl.samples_per_prompt", "2", "--rl.max_new_tokens", "4", "--rl.max_turns", "2", "--rl.show_every", "0",
                 "--data.train_rows", "4", "--train.progress", "false"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "env/episodes" in r][-1]
    assert last["env/episodes"] == 4 and 1 <= last["env/turns_mean"] <= 2 and last["env/env_tokens_mean"] > 0
    assert -2.0 <= last["env/reward_mean"] <= 1.0 and "loss" in last  # -1 per unreadable turn, +-1 per hand


def test_the_scripted_players():
    for spec, moves in (("frozenlake", 6), ("frozenlake:random_map=1", None), ("frozenlake:random_map=1,map_name=8x8", None)):
        env = env_factory(spec)()
        for seed in range(8):
            env.reset(seed=seed)
            for t in range(60):
                move = env.demonstrate()
                assert move == env.demonstrate() and move in MOVES
                _, reward, terminated, truncated, _ = env.step(move)
                if terminated or truncated:
                    break
            assert reward == 1.0 and (moves is None or t + 1 == moves), (spec, seed)  # the shortest safe path
    b = BlackjackEnv()
    b.reset(seed=0)
    for obs, move in (((12, 5, 0), "hit"), ((16, 10, 0), "hit"), ((17, 10, 0), "stick"), ((17, 10, 1), "hit"), ((18, 2, 1), "stick")):
        b.observation = obs
        assert b.demonstrate() == move
    from posttrain.envs.transcripts import play

    result = play("frozenlake:random_map=1", n_rows=3)
    said = [m["content"] for r in result.rows for m in r["messages"] if m["role"] == "assistant"]
    assert result.success_rate == 1.0 and len(result.rows) == 3 and said and set(said) <= set(MOVES)
