"""Transcripts of a scripted policy: SFT rows for an agent, played in an environment.

    from posttrain.envs.transcripts import play
    result = play("guess:high=16,max_guesses=4", n_rows=300)      # or an environment class
    result.rows[0]  # {"messages": [...], "reward": 1.0, "env": ..., "env_row": {"seed": 0}, ...}

    posttrain data transcripts --env guess:high=16,max_guesses=4 --rows 300 --out runs/transcripts
    posttrain sft --model tiny-llama --data runs/transcripts/data.jsonl --out runs/sft-guess

The policy is Python: by default the environment's own ``demonstrate()`` (the turn a scripted player
would write now; the built-in ``guess`` guesses at random among the numbers still consistent with the
feedback, ``calculator`` calls its tool with the problem's expression, then answers), or any
``policy(env) -> str``. Each episode is rolled out by the same code as RL and evaluation
(`posttrain.rollout.multiturn.run_episodes`) with an engine that "samples" the policy's text and the
end-of-turn token, so a row's ``messages`` is the conversation exactly as the rollout renders it
(system / tool prompt, first observation, assistant turns, env messages in ``env_role``, env text cut
at ``max_tool_output_tokens`` as the model sees it) and SFT on it (`posttrain.data.chat.tokenize_sft`)
yields the episode's token ids and mask. Rows are the environment's seeded rows (`env_rows`, seed 0
by default; ``posttrain eval --env`` holds out seeds from 1000 on). Kept by default: episodes whose
reward is at least ``success_reward`` (rejection sampling / expert iteration on a scripted expert);
``keep="all"`` keeps every episode that did not fail; the reward is in each row.

Peers: LlamaGym and TRL's ``environment_factory`` roll out RL only; SWEET-RL (Zhou et al. 2025) and
ReAct (Yao et al. 2023) fine-tune on collected agent trajectories first. Departure: the trajectories
here come from a scripted player in the environment itself, not from a stronger model, and they are
rendered by the RL rollout (never re-rendered), so imitation and RL see the same tokens.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from posttrain.envs.base import env_factory, env_rows, make_session
from posttrain.rollout.base import Completion, SamplingParams
from posttrain.rollout.multiturn import EpisodeLimits, TurnFormat, run_episodes, turn_format

KEEP = ("success", "all")


class ScriptedEngine:
    """A `RolloutEngine` for one episode at a time: every call answers with ``policy(env)`` and the
    template's end-of-turn token(s), logprob 0 (what a model that stops at EOS would sample)."""

    def __init__(self, tokenizer, env, policy: Callable[[Any], str], end_ids: list[int]):
        self.tokenizer, self.env, self.policy, self.end_ids = tokenizer, env, policy, list(end_ids)

    def generate(self, prompts, params: SamplingParams):
        out = []
        for _ in prompts:
            text = self.policy(self.env)
            if not isinstance(text, str):
                raise TypeError(f"the scripted policy returned {type(text).__name__}, expected str")
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + self.end_ids
            finish = "length" if len(ids) > params.max_new_tokens else "stop"
            ids = ids[: params.max_new_tokens]
            out.append([Completion(ids, [0.0] * len(ids), finish, text, token_mask=[1] * len(ids))])
        return out

    def update_weights(self, named_weights, version):  # nothing to update: the policy is Python
        pass


def end_of_turn(tokenizer, fmt: TurnFormat) -> list[int]:
    """The tokens a model samples to end its turn: the template's close through EOS (``<|im_end|>``
    of ``<|im_end|>\\n``), the whole close when it holds no EOS, else EOS alone."""
    eos, close = tokenizer.eos_token_id, list(fmt.close)
    if eos in close:
        return close[: close.index(eos) + 1]
    return close or ([eos] if eos is not None else [])


def demonstrate(env) -> str:
    """The default policy: the environment's own ``demonstrate()``."""
    return env.demonstrate()


@dataclass
class Transcripts:
    """What `play` made: kept rows, the kept rows' `Episode`s (token ids, masks), the episodes left
    out (``{"row", "reason", "data"}``) and counts."""

    rows: list[dict] = field(default_factory=list)
    episodes: list = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    @property
    def success_rate(self) -> float:
        n = self.counts["episodes"] - self.counts["failed"]
        return self.counts["successes"] / n if n else 0.0


def _check_policy(factory, policy, name: str) -> Callable:
    if policy is not None:
        return policy
    probe = factory()
    if not callable(getattr(probe, "demonstrate", None)):
        from posttrain.config import ConfigError

        raise ConfigError(f"environment '{name}' has no demonstrate() method (the scripted player); "
                          "define one, or pass policy=callable(env) -> str")
    return demonstrate


def play(env: str | Callable, n_rows: int = 300, *, rows: list[dict] | None = None, seed: int = 0, tokenizer=None,
         limits: EpisodeLimits = EpisodeLimits(max_turns=8, max_episode_tokens=1024, max_tool_output_tokens=256),
         policy: Callable[[Any], str] | None = None, keep: str = "success", success_reward: float = 1.0,
         max_new_tokens: int = 256, timeout_s: float = 10.0) -> Transcripts:
    """Play `env` (a registered spec such as ``guess:high=16`` or a class) with `policy` on `rows`
    (default: `n_rows` seeded rows from `seed`) and return the transcripts (module docstring).

    `tokenizer` (default: the tiny models' character tokenizer) bounds the episodes with `limits` and
    `max_new_tokens` per turn, as the rollout of that model would; use the tokenizer and limits of
    the run the transcripts are for. An environment failure leaves the episode out (``removed``)."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if tokenizer is None:
        from posttrain.models.tokenizer import build_char_tokenizer

        tokenizer = build_char_tokenizer()
    name = env if isinstance(env, str) else getattr(env, "__name__", "env")
    factory = env_factory(env)
    policy = _check_policy(factory, policy, name)
    rows = list(rows) if rows is not None else env_rows(factory, n_rows, seed)
    fmt = turn_format(tokenizer, limits.env_role)
    end = end_of_turn(tokenizer, fmt)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    out = Transcripts()
    for i, row in enumerate(rows):
        session = make_session(factory, timeout_s)
        ep = run_episodes(ScriptedEngine(tokenizer, session.env, policy, end), tokenizer, [session], [row], params,
                          limits, fmt)[0]
        out.counts["episodes"] += 1
        out.counts[f"status_{ep.status}"] += 1
        record = {"messages": ep.messages, "reward": ep.reward, "env": name, "env_row": row, "turns": ep.turns,
                  "status": ep.status, "turn_rewards": ep.turn_rewards}
        if ep.failed:
            out.counts["failed"] += 1
            out.removed.append({"row": i + 1, "reason": f"environment failure: {ep.status}", "data": record})
            continue
        won = ep.reward >= success_reward
        out.counts["successes"] += int(won)
        if won or keep == "all":
            out.rows.append(record)
            out.episodes.append(ep)
        else:
            out.removed.append({"row": i + 1, "reason": f"reward {ep.reward:g} < success_reward {success_reward:g}",
                                "data": record})
    return out
