"""Wordle: the letter marks (repeated letters: greens first, then yellows left to right while copies
last), reading a guess from a reply, invalid guesses (told, counted, a turn used), rewards, seeding,
and a rollout whose env tokens have mask 0."""
import re

import pytest

from posttrain.envs import env_factory, make_session
from posttrain.envs.wordle import WORDS, WordleEnv, read_guess, score_guess
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.rollout.multiturn import EpisodeLimits, run_episodes
from turn_script import TurnScript

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("secret, guess, marks", [
    ("abbey", "babes", "YYGGX"),  # both b's: one green, one yellow; a yellow
    ("abbey", "keeps", "XYXXX"),  # one e in the secret: the second e is gray
    ("abbey", "bobby", "YXGXG"),  # the green b takes a copy first; the third b has none left
    ("those", "geese", "XXXGG"),  # the green e at the end leaves no copy for the earlier e's
    ("crane", "eerie", "XXYXG"),
    ("apple", "paper", "YYGYX"),
    ("hello", "llama", "YYXXX"),  # two l's in both: two yellows
    ("steel", "sleep", "GYGGX"),
    ("crane", "crane", "GGGGG"),
])
def test_score_guess_classic_cases(secret, guess, marks):
    assert score_guess(secret, guess) == marks


def test_score_guess_rejects_a_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        score_guess("crane", "cran")


@pytest.mark.parametrize("text, word, why", [
    ("[crane]", "crane", ""), ("I think [ ABOUT ] is it", "about", ""), ("My guess is crane", "crane", ""),
    ("crane? no: SLEEP", "sleep", ""), ("[about] or maybe apple", "about", ""),
    ("xyzzy", None, "'xyzzy' is not in my word list."), ("cat", None, "'cat' is not a 5-letter word."),
    ("", None, "I found no word in your reply."), ("12345 !!", None, "I found no word in your reply."),
])
def test_read_guess(text, word, why):
    assert read_guess(text) == (word, why)


def test_read_guess_not_strict_takes_any_five_letters():
    assert read_guess("xyzzy", strict=False) == ("xyzzy", "")
    assert env_factory("wordle:strict=0")().strict is False and WordleEnv().strict is True


def test_the_word_list():
    assert len(WORDS) >= 300 and len(set(WORDS)) == len(WORDS)
    assert all(len(w) == 5 and w.isalpha() and w.islower() for w in WORDS)
    intro, _ = WordleEnv().reset(seed=0)
    assert read_guess(intro.split("e.g. ")[1]) == ("crane", "")  # the example the model is shown is a valid guess


def _env(secret, **kw):
    env = WordleEnv(**kw)
    env.reset(seed=0)
    env.secret = secret
    return env


def test_feedback_text_and_a_win():
    env = _env("steel")
    assert env.step("sleep") == ("SLEEP G Y G G X (5 left)", 0.0, False, False, {})
    assert env.step("[steel]") == ("STEEL G G G G G Solved in 2!", 1.0, True, False, {"guesses": 2})
    env = _env("steel", max_guesses=1)
    assert env.step("steel")[1:3] == (1.0, True)  # solved on the last guess: a win, not truncated


def test_invalid_actions_are_told_counted_and_use_a_turn():
    s = make_session(env_factory("wordle:max_guesses=3"))
    s.open({"seed": 4})
    secret = s.env.secret
    a = s.step("cat")
    assert (a.observation, a.reward, a.done) == ("'cat' is not a 5-letter word. That used a guess (2 left).", 0.0, False)
    assert s.step("xyzzy").observation == "'xyzzy' is not in my word list. That used a guess (1 left)."
    last = s.step("hmm")
    assert last.done and last.reward == 0.0
    assert last.observation == f"'hmm' is not a 5-letter word. Out of guesses: the word was {secret}."
    assert s.counts["invalid_actions"] == 3


def test_losing_pays_nothing_unless_partial_credit():
    plain = _env("steel", max_guesses=1)
    assert plain.step("sleep") == ("SLEEP G Y G G X Out of guesses: the word was steel.", 0.0, False, True, {})
    env = _env("steel", max_guesses=2, partial_credit=0.5)
    assert env.step("sleep")[1] == 0.0  # not at the end yet
    assert env.step("about")[1] == pytest.approx(0.5 * (3 + 0.5) / 5)  # the best guess, not the last one
    with pytest.raises(ValueError):
        WordleEnv(partial_credit=2.0)


def test_seeded_secrets():
    a, b = WordleEnv(), WordleEnv()
    secrets = []
    for seed in range(30):
        a.reset(seed=seed)
        b.reset(seed=seed)
        assert a.secret == b.secret and a.secret in WORDS
        secrets.append(a.secret)
    assert len(set(secrets)) > 20


def _seed_of(word):
    env = WordleEnv()
    return next(s for s in range(10_000) if env.reset(seed=s) and env.secret == word)


def test_a_scripted_episode_env_tokens_are_masked(tiny):
    _, tok = tiny
    seed = _seed_of("steel")
    (ep,) = run_episodes(TurnScript(tok, ["[sleep]", "cat", "steel"]), tok, [make_session(env_factory("wordle"))], [{"seed": seed}],
                         SamplingParams(max_new_tokens=12), EpisodeLimits(max_turns=6, max_episode_tokens=1000, max_tool_output_tokens=200))
    assert ep.status == "done" and ep.reward == 1.0 and ep.turn_rewards == [0.0, 0.0, 1.0]
    assert ep.counts["invalid_actions"] == 1
    env_text = tok.decode([t for t, m in zip(ep.token_ids, ep.token_mask) if not m])
    assert env_text == ("<|user|>SLEEP G Y G G X (5 left)<|assistant|>"
                        "<|user|>'cat' is not a 5-letter word. That used a guess (4 left).<|assistant|>")
    assert tok.decode([t for t, m in zip(ep.token_ids, ep.token_mask) if m], skip_special_tokens=True) == "[sleep]catsteel"


def test_tiny_model_rollout_env_tokens_are_masked(tiny):
    model, tok = tiny
    rows = [{"seed": s} for s in range(3)]
    eps = run_episodes(HFEngine(model, tok), tok, [make_session(env_factory("wordle")) for _ in rows], rows,
                       SamplingParams(max_new_tokens=6, seed=0), EpisodeLimits(max_turns=3, max_episode_tokens=400, max_tool_output_tokens=200))
    for ep in eps:
        assert ep.status == "turn_limit" and ep.turns == 3 and ep.reward == 0.0  # a random model does not solve it
        obs = [m["content"] for m in ep.messages[2:] if m["role"] == "user"]
        assert len(obs) == 2 and all("used a guess" in o or re.fullmatch(r"[A-Z]{5}( [GYX]){5} \(\d left\)", o) for o in obs)
        env_text = tok.decode([t for t, m in zip(ep.token_ids, ep.token_mask) if not m])
        assert re.fullmatch("".join(r"(?:<\|eos\|>)?<\|user\|>" + re.escape(o) + r"<\|assistant\|>" for o in obs), env_text)
        assert all(lp == 0.0 for lp, m in zip(ep.logprobs, ep.token_mask) if not m)
        assert 2 <= ep.counts["invalid_actions"] <= 3


def test_the_scripted_player_keeps_to_the_feedback_and_solves():
    env, turns = WordleEnv(), []
    for seed in range(40):
        env.reset(seed=seed)
        for t in range(6):
            guess = env.demonstrate()
            assert guess == env.demonstrate()  # the same guess until the next step
            word = guess.strip("[]")
            assert all(score_guess(word, g) == m for g, m in env.history)  # consistent with every mark so far
            if env.step(guess)[2]:
                turns.append(t + 1)
                break
    assert len(turns) >= 38 and 2 < sum(turns) / len(turns) < 5


def test_sft_transcripts_of_the_scripted_player():
    from posttrain.envs.transcripts import play

    result = play("wordle", n_rows=4)
    assert result.success_rate == 1.0 and len(result.rows) == 4
    assert all(re.fullmatch(r"\[[a-z]{5}\]", m["content"]) for r in result.rows for m in r["messages"] if m["role"] == "assistant")
