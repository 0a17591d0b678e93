"""Self-play on two-player games: Tic-Tac-Toe's rules, per-seat token streams (prefix-extended, the
opponent's moves only as mask-0 env text), per-seat rewards and groups, illegal moves, limits and
failures, determinism, and the CLI (``posttrain rl --rl.env tictactoe``, ``posttrain eval --env tictactoe``)."""
import json
import random
import re
import time

import pytest
import torch

from posttrain.advantages import compute_advantages
from posttrain.envs import ENVS, make_session
from posttrain.envs.tictactoe import TicTacToe, parse_move, winner
from posttrain.envs.training import EnvRollouts
from posttrain.rollout import Completion, HFEngine, SamplingParams
from posttrain.rollout.multiturn import EpisodeLimits
from posttrain.rollout.selfplay import RandomOpponent, game_metrics, make_game, run_games

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "tiny-llama:d=32,l=2,h=2"
LIMITS = EpisodeLimits(max_turns=5, max_episode_tokens=2000, max_tool_output_tokens=200)
_BOARD = re.compile(r" (\S) \| (\S) \| (\S)\n---\+---\+---\n (\S) \| (\S) \| (\S)\n---\+---\+---\n (\S) \| (\S) \| (\S)")


def seed_where(first: int) -> int:
    """A seed whose game is opened by seat `first`."""
    return next(s for s in range(100) if TicTacToe().reset(s)[1]["first"] == first)


class SeatScript:
    """An engine that answers each input with ``policy(seat, turn, decoded input)`` + EOS (logprob
    -0.5 per token), `seat` read from the prompt ("You are X"), `turn` = this seat's turns so far.
    Records every call's inputs with their seat."""

    def __init__(self, tok, policy):
        self.tok, self.policy, self.calls = tok, policy, []

    def generate(self, prompts, params):
        out, call = [], []
        for ids in prompts:
            text = self.tok.decode(list(ids))
            seat = 0 if "You are X" in text else 1
            turn = text.count("<|assistant|>") - 1
            call.append((seat, list(ids)))
            ans = self.tok(self.policy(seat, turn, text), add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            ans = ans[: params.max_new_tokens]
            out.append([Completion(ans, [-0.5] * len(ans), "stop", token_mask=[1] * len(ans))])
        self.calls.append(call)
        return out

    def update_weights(self, named_weights, version):
        pass


def lowest_free(seat, turn, text):
    """Reads the last board in the input and marks its lowest-numbered empty cell."""
    cells = _BOARD.findall(text)[-1]
    return next(c for c in cells if c.isdigit())


def test_tictactoe_rules_parsing_and_rewards():
    assert "tictactoe" in ENVS and ENVS.needs("tictactoe").style == "two_player"
    assert parse_move("I take [5]") == 5 and parse_move("\\boxed{4} not 9") == 4 and parse_move("<think>1 2</think> 7") == 7
    assert parse_move("cells 1 and 3 are taken, so 9") == 9 and parse_move("12 or 0") is None and parse_move("") is None
    assert {TicTacToe().reset(s)[1]["first"] for s in range(20)} == {0, 1}  # the seed decides who opens
    assert [TicTacToe().reset(s)[1]["first"] for s in range(8)] == [TicTacToe().reset(s)[1]["first"] for s in range(8)]
    env = TicTacToe()
    obs, info = env.reset(seed_where(0))
    assert "You are X. X moves first." in obs[0] and "Your move." in obs[0]
    assert "You are O" in obs[1] and "Your move" not in obs[1]
    for move, want_obs in (("1", [None, "X played 1."]), ("4", ["O played 4.", None]), ("2", None), ("5", None)):
        o, r, done, _, _ = env.step(move)
        assert r == [0.0, 0.0] and not done
        if want_obs:
            assert [x if x is None else x.split("\n")[0] for x in o] == want_obs
    o, r, done, _, info = env.step("[3]")  # X: 1 2 3, a row
    assert done and r == [1.0, -1.0] and info["winner"] == 0 and o[0].endswith("X wins.")
    assert winner(env.board) == "X" and env.legal_actions() == ["6", "7", "8", "9"]
    env.reset(seed_where(1))  # O opens and wins a column: O 1 4 7, X 2 5
    for move in ("1", "2", "4", "5"):
        env.step(move)
    assert env.step("7")[1] == [-1.0, 1.0]
    env.reset(seed_where(0))  # a draw: X O X / X O O / O X X
    rewards = [env.step(m)[1] for m in "1 2 3 5 4 6 8 7 9".split()]
    assert rewards[-1] == [0.0, 0.0] and env.over and winner(env.board) is None
    env.reset(seed_where(0))
    env.step("5")
    o, r, done, _, info = env.step("5")  # O marks a taken cell: O loses at once
    assert done and r == [1.0, -1.0] and info["counts"] == {"invalid_actions": 1} and "taken" in o[1]
    env.reset(seed_where(0))
    assert env.step("no idea")[1] == [-1.0, 1.0]
    with pytest.raises(TypeError, match="two-player"):
        make_session(TicTacToe)


def _x_wins(seat, turn, text):
    return ["1", "2", "3"][turn] if seat == 0 else ["4", "5", "9"][turn]


def test_each_seat_stream_extends_itself_and_only_its_own_tokens_are_trained(tiny):
    _, tok = tiny
    eng = SeatScript(tok, _x_wins)
    seeds = [seed_where(0), seed_where(1)]  # X opens game 0, O opens game 1
    games = run_games(eng, tok, [make_game(TicTacToe) for _ in seeds], [{"seed": s} for s in seeds],
                      SamplingParams(max_new_tokens=8), LIMITS)
    g0, g1 = games
    assert g0.status == "done" and g0.rewards == [1.0, -1.0] and g0.winner == 0 and g0.moves == 5 and g0.first == 0
    assert g1.first == 1 and g1.rewards == [1.0, -1.0] and g1.moves == 6
    assert [len(c) for c in eng.calls][:5] == [2, 2, 2, 2, 2]  # both games' current turns batched per round
    for g_idx, game in enumerate(games):
        for seat, ep in enumerate(game.episodes):
            mine = [ids for call in eng.calls for s, ids in call if s == seat and ids[: len(ep.prompt_ids)] == ep.prompt_ids]
            assert len(mine) == ep.turns == (3 if seat == 0 else 2 + g_idx)
            for prev, nxt in zip(mine, mine[1:]):  # no re-tokenization: each input extends the last
                assert nxt[: len(prev)] == prev
            full = ep.prompt_ids + ep.token_ids
            assert all(full[: len(ids)] == ids for ids in mine) and mine[0] == ep.prompt_ids
            own = tok.decode([t for t, m in zip(ep.token_ids, ep.token_mask) if m])
            moves = [_x_wins(seat, t, "") for t in range(ep.turns)]
            assert own == "<|eos|>".join(moves) + "<|eos|>"  # only the seat's own sampled tokens have mask 1
            env_text = tok.decode([t for t, m in zip(ep.token_ids, ep.token_mask) if not m])
            other = "O" if seat == 0 else "X"
            assert env_text.count(f"{other} played") == ep.turns - 1 and "You are" not in env_text
            assert all(lp == (-0.5 if m else 0.0) for m, lp in zip(ep.token_mask, ep.logprobs))
            want = game.rewards[seat]
            assert ep.reward == want and ep.token_rewards()[ep.turn_ends[-1]] == want and sum(ep.token_rewards()) == want
    # O's prompt in game 0 shows X's opening; X's prompt in game 1 shows O's
    assert "X played 1." in tok.decode(g0.episodes[1].prompt_ids) and "O played 4." in tok.decode(g1.episodes[0].prompt_ids)
    m = game_metrics(games)
    assert m["env/seat0_win_rate"] == 1.0 and m["env/first_mover_win_rate"] == 0.5 and m["env/moves_mean"] == 5.5


def test_an_illegal_move_loses_and_is_counted(tiny):
    _, tok = tiny
    s = seed_where(0)
    policies = {"unreadable": lambda seat, turn, text: "hmm", "taken": lambda seat, turn, text: "5"}
    games = {k: run_games(SeatScript(tok, p), tok, [make_game(TicTacToe)], [{"seed": s}], SamplingParams(max_new_tokens=8),
                          LIMITS)[0] for k, p in policies.items()}
    g = games["unreadable"]  # X's first move is unreadable: X -1, O +1, O never moved (no token to train)
    assert g.status == "done" and g.rewards == [-1.0, 1.0] and g.invalid == [1, 0] and g.moves == 1
    assert g.episodes[0].counts["invalid_actions"] == 1 and g.episodes[1].token_ids == [] and g.episodes[1].reward == 1.0
    g = games["taken"]  # X 5, O 5: O loses
    assert g.rewards == [1.0, -1.0] and g.invalid == [0, 1] and g.episodes[1].turns == 1
    assert game_metrics([g])["env/seat1_invalid_actions"] == 1


class Flaky:
    """Two-player: seat 1's move raises (``mode`` raise), hangs (sleep) or pays garbage rewards."""

    players = ("A", "B")

    def __init__(self, mode="raise"):
        self.mode, self.current_player = mode, 0

    def reset(self, seed=None):
        self.current_player = 0
        return ["you are A", "you are B"], {}

    def step(self, action):
        rewards = [0.25, 0.0] if self.current_player == 0 else [0.0, 0.0]  # A earns 0.25 a move
        if self.current_player == 1:
            if self.mode == "raise":
                raise RuntimeError("game bug")
            if self.mode == "hang":
                time.sleep(2)
            if self.mode == "garbage":
                return [None, None], [float("nan"), 0.0], False, False, {}
        self.current_player = 1 - self.current_player
        return ["ok", "ok"], rewards, False, False, {}


@pytest.mark.parametrize("mode,kind", [("raise", "env_error"), ("hang", "env_timeout"), ("garbage", "env_garbage")])
def test_failures_fail_the_game_and_the_other_games_go_on(tiny, mode, kind):
    _, tok = tiny
    eng = SeatScript(tok, lambda seat, turn, text: "go")
    sessions = [make_game(lambda: Flaky(mode), timeout_s=0.5), make_game(TicTacToe, timeout_s=0.5)]
    games = run_games(eng, tok, sessions, [{"seed": 1}, {"seed": seed_where(0)}], SamplingParams(max_new_tokens=4), LIMITS)
    bad, ok = games
    assert bad.status == kind and [e.status for e in bad.episodes] == [kind, kind]
    assert bad.rewards == [0.0, 0.0] and all(e.counts[kind] == 1 for e in bad.episodes)  # failure_reward, not A's 0.25
    assert ok.status == "done" and ok.rewards == [-1.0, 1.0]  # "go" is unreadable: X loses its game, untouched by the other


def test_turn_and_token_limits_end_the_game_for_both_seats(tiny):
    _, tok = tiny
    eng = SeatScript(tok, lambda seat, turn, text: "ok")
    flaky = lambda: Flaky("none")  # noqa: E731  (never ends by itself)
    g = run_games(eng, tok, [make_game(flaky)], [{"seed": 0}], SamplingParams(max_new_tokens=4),
                  EpisodeLimits(max_turns=3, max_episode_tokens=2000))[0]
    assert g.status == "turn_limit" and [e.turns for e in g.episodes] == [3, 3] and g.moves == 6
    assert g.episodes[0].reward == pytest.approx(0.75) and g.episodes[0].turn_rewards == [0.25] * 3
    g = run_games(eng, tok, [make_game(flaky)], [{"seed": 0}], SamplingParams(max_new_tokens=4),
                  EpisodeLimits(max_turns=10, max_episode_tokens=20))[0]
    assert g.status == "token_limit" and all(len(e.token_ids) < 20 for e in g.episodes)
    assert {e.status for e in g.episodes} == {"token_limit"}


def test_a_seat_that_reaches_a_limit_on_its_move_forfeits_tictactoe(tiny):
    """Tic-Tac-Toe has ``forfeit``: running out of tokens or turns loses, it is no longer a 0-0 draw."""
    _, tok = tiny
    eng = SeatScript(tok, lowest_free)
    for first in (0, 1):
        seed = seed_where(first)
        # the opener's second turn needs an env message (the reply and the board) that does not fit
        g = run_games(eng, tok, [make_game(TicTacToe)], [{"seed": seed}], SamplingParams(max_new_tokens=4),
                      EpisodeLimits(max_turns=5, max_episode_tokens=30))[0]
        assert g.status == "token_limit" and g.moves == 2
        assert g.rewards[first] == -1.0 and g.rewards[1 - first] == 1.0 and g.winner == 1 - first
        assert g.episodes[first].turn_rewards == [-1.0]  # on the forfeiting seat's last turn
        # turn limit: one move each, then the opener is to move again
        g = run_games(eng, tok, [make_game(TicTacToe)], [{"seed": seed}], SamplingParams(max_new_tokens=4),
                      EpisodeLimits(max_turns=1, max_episode_tokens=2000))[0]
        assert g.status == "turn_limit" and g.moves == 2 and g.rewards[first] == -1.0 and g.winner == 1 - first
        assert "forfeits" in g.messages[-1]["content"]


def test_a_template_that_rewrites_history_gives_a_sample_per_turn_with_the_seat_reward():
    import copy

    from posttrain.models.tokenizer import build_char_tokenizer

    tok = copy.deepcopy(build_char_tokenizer())
    tok.chat_template = (  # drops earlier turns' reasoning: not append-only
        "{% for m in messages %}{% set c = m['content'] %}"
        "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
        "{{ '<|' + m['role'] + '|>' + c }}{% if m['role'] == 'assistant' %}{{ '<|eos|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    eng = SeatScript(tok, lambda seat, turn, text: "<think>r</think>" + _x_wins(seat, turn, text))
    g = run_games(eng, tok, [make_game(TicTacToe)], [{"seed": seed_where(0)}], SamplingParams(max_new_tokens=40), LIMITS)[0]
    assert g.rewards == [1.0, -1.0] and [len(e.parts) for e in g.episodes] == [3, 2]
    x_inputs = [ids for call in eng.calls for seat, ids in call if seat == 0]
    assert [p.prompt_ids for p in g.episodes[0].parts] == x_inputs
    assert [p.reward for p in g.episodes[0].samples()] == [1.0] * 3 and [p.reward for p in g.episodes[1].samples()] == [-1.0] * 2
    assert "<think>r" not in tok.decode(x_inputs[2]).split("<|user|>")[1] and "O played 5." in tok.decode(x_inputs[2])


def test_selfplay_is_deterministic_by_seed(tiny):
    model, tok = tiny

    def play(seed):
        games = run_games(HFEngine(model, tok), tok, [make_game(TicTacToe) for _ in range(4)], [{"seed": i} for i in range(4)],
                          SamplingParams(max_new_tokens=4, seed=seed), LIMITS)
        return [(g.rewards, g.moves, [e.token_ids for e in g.episodes]) for g in games]

    a = play(3)
    assert a == play(3) and a != play(4)


def test_groups_are_one_seat_of_one_seed_and_advantages_are_per_seat(tiny):
    _, tok = tiny
    rng = random.Random(0)
    envs = EnvRollouts("tictactoe", 4, 0, LIMITS)
    assert envs.two_player and envs.groups_per_row == 2
    eng = SeatScript(tok, lambda seat, turn, text: rng.choice(["1", "2", "3", "5", "7", "x"]))
    groups, m = envs.rollout(eng, tok, [0, 2], 4, SamplingParams(max_new_tokens=4))
    assert len(groups) == 4 and m["env/games"] == 8 and m["env/episodes"] == 16
    for k, group in enumerate(groups):  # row 0 seat 0, row 0 seat 1, row 2 seat 0, row 2 seat 1
        seat_mark = "X" if k % 2 == 0 else "O"
        assert group and all(f"You are {seat_mark}" in tok.decode(e.prompt_ids) for e in group)
    rewards = torch.cat([torch.tensor([e.reward for e in g]) for g in groups])
    assert float(rewards[: len(groups[0]) + len(groups[1])].abs().sum()) > 0  # decisive games in row 0
    ids = torch.arange(len(groups)).repeat_interleave(torch.tensor([len(g) for g in groups]))  # as the trainer builds them
    adv = compute_advantages("grpo", rewards, ids)[0]
    for k in range(len(groups)):  # each seat's baseline is its own seat's mean: zero-sum within the seat group
        a, r = adv[ids == k], rewards[ids == k]
        assert float(a.sum()) == pytest.approx(0.0, abs=1e-5)
        assert all((a[i] > a[j]) == (r[i] > r[j]) for i in range(len(r)) for j in range(len(r)))


def test_random_opponent_plays_legal_moves_seeded():
    env = TicTacToe()
    env.reset(0)
    sess = make_game(TicTacToe)
    sess.env = env
    a, b = RandomOpponent("s"), RandomOpponent("s")
    assert [a(sess) for _ in range(5)] == [b(sess) for _ in range(5)]
    assert all(m in env.legal_actions() for m in [a(sess) for _ in range(5)])


class _Legal:
    def __init__(self, env):
        self.env = env

    def legal(self):
        return self.env.legal_actions()


def test_eval_against_the_random_player_matches_a_direct_simulation(tiny, tmp_path):
    from posttrain.configs import EvalSampling
    from posttrain.eval.env import _opponents, evaluate_env

    model, tok = tiny
    res = evaluate_env(model, tok, "tictactoe", EvalSampling(n=0, greedy=True, max_new_tokens=4), LIMITS, tmp_path,
                       limit=30, engine=SeatScript(tok, lowest_free))
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    # the same games played directly: seat 0 marks its lowest free cell, seat 1 is the row's seeded opponent
    outcomes = []
    for row, opp in zip([r["env_row"] for r in rows], _opponents([r["env_row"] for r in rows], (1,), "opponent")):
        env = TicTacToe()
        env.reset(row["seed"])
        while True:
            move = env.legal_actions()[0] if env.current_player == 0 else opp[1](_Legal(env))
            _, r, done, _, _ = env.step(move)
            if done:
                outcomes.append(r[0])
                break
    m = res["metrics"]
    assert [r["reward"] for r in rows] == outcomes
    assert m["win_rate"] == pytest.approx(sum(o > 0 for o in outcomes) / 30) and m["success_rate"] == m["win_rate"]
    assert m["loss_rate"] == pytest.approx(sum(o < 0 for o in outcomes) / 30) and 0 < m["win_rate"] < 1
    assert m["win_rate"] + m["draw_rate"] + m["loss_rate"] == pytest.approx(1.0) and m["invalid_action_loss_rate"] == 0
    base = m["random_baseline"]
    assert sum(base.values()) == pytest.approx(1.0) and 0 < base["win_rate"] < 1
    bad = evaluate_env(model, tok, "tictactoe", EvalSampling(n=0, greedy=True, max_new_tokens=4), LIMITS, tmp_path / "bad",
                       limit=30, engine=SeatScript(tok, lambda seat, turn, text: "?"))["metrics"]
    assert bad["loss_rate"] == 1.0 and bad["invalid_action_loss_rate"] == 1.0 and bad["success_rate"] == 0.0
    assert bad["random_baseline"] == base  # the baseline does not depend on the policy


def test_cli_rl_selfplay_runs_end_to_end(tmp_path):
    from posttrain.cli import main

    out = tmp_path / "run"
    assert main(["rl", "--rl.env", "tictactoe", "--model", MODEL, "--out", str(out), "--max-steps", "2",
                 "--rl.prompts_per_step", "2", "--rl.samples_per_prompt", "2", "--rl.max_new_tokens", "3",
                 "--rl.max_turns", "5", "--rl.show_every", "0", "--data.train_rows", "8", "--train.progress", "false",
                 "--lr", "1e-2"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "env/games" in r][-1]
    assert last["env/games"] == 4 and last["env/episodes"] == 8  # 2 seeds x 2 games, one episode per seat
    assert last["env/seat0_win_rate"] + last["env/seat1_win_rate"] + last["env/draw_rate"] == pytest.approx(1.0)
    assert "loss" in last and "grad_norm" in last and (out / "checkpoints").exists()


def test_cli_eval_on_tictactoe(tmp_path):
    from posttrain.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "--env", "tictactoe", "--model", MODEL, "--data.limit", "6", "--sampling.n", "1",
                 "--sampling.max_new_tokens", "3", "--episode.max_turns", "5", "--train.progress", "false",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    eps = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in eps] == ["greedy"] * 6 + ["sample0"] * 6
    m, greedy = res["metrics"], eps[:6]
    assert m["win_rate"] == sum(e["winner"] == 0 for e in greedy) / 6 == m["success_rate"]
    assert m["loss_rate"] == sum(e["winner"] == 1 for e in greedy) / 6
    assert all((e["reward"] > 0) == (e["winner"] == 0) for e in eps)
    assert set(m["random_baseline"]) == {"win_rate", "draw_rate", "loss_rate"} and "sampled_outcomes@1" in m


def test_readme_selfplay_commands_run(tmp_path, monkeypatch):
    """The README's self-play lines as a user types them (shrunk): rl then eval on the trained run."""
    import shlex
    from pathlib import Path

    from posttrain.cli import main

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- selfplay-examples", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    cmds = [shlex.split(line) for line in block.splitlines() if line.startswith("posttrain")]
    assert [c[1] for c in cmds] == ["rl", "eval"]
    monkeypatch.chdir(tmp_path)
    shrink = {"rl": ["--max-steps", "1", "--data.train_rows", "4", "--rl.prompts_per_step", "2", "--rl.samples_per_prompt", "2",
                     "--rl.max_new_tokens", "3", "--train.progress", "false"],
              "eval": ["--data.limit", "4", "--sampling.n", "0", "--sampling.max_new_tokens", "3", "--train.progress", "false"]}
    for words in cmds:
        words = [MODEL if w == "tiny-llama" else w for w in words[1:]]
        assert main([*words, *shrink[words[0]]]) == 0, words
    res = json.loads((tmp_path / "runs" / "eval-tictactoe" / "results.json").read_text())
    m = res["metrics"]
    assert m["win_rate"] + m["draw_rate"] + m["loss_rate"] == pytest.approx(1.0)
    assert res["model"].endswith("rl-tictactoe")
