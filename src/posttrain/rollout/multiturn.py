"""Multi-turn episodes over any `RolloutEngine`, token in / token out.

An episode alternates model turns and environment turns (ReAct, Yao et al. 2023: reason, act with a
tool, observe; LlamaGym: a gym loop around a chat model). Turn t's input ids are turn t-1's input ids
+ its sampled ids + the environment's response ids; the history is never re-rendered or
re-tokenized, so what the trainer scores is exactly what the engine saw and sampled. The environment's
response is rendered *as a delta* with the chat template's own turn markers (`TurnFormat`):

    [prompt] [sampled turn 1] [close | open  env text  then] [sampled turn 2] ...
              mask 1            mask 0 (logprob 0.0)          mask 1

``close`` is what the template writes after an assistant message (what the model did not sample of
it: ``<|im_end|>`` already sampled leaves the ``\\n``), ``open`` / ``then`` the markers around the env
message through the next assistant generation prompt. Each part is tokenized once, on its own; the
env text with ``split_special_tokens`` so an observation cannot forge a turn marker.

Append-only detection (`turn_format`): probe conversations (two rounds, a ``<think>`` block in an
assistant message) are rendered with every prefix of their messages, and each rendering (with the
generation prompt before an assistant message) must be a prefix of the next; the deltas are cut from
the same renderings. A template that fails (it rewrites history, e.g. drops past reasoning) is not
append-only: each turn then starts a new training sample whose prompt is the conversation so far,
rendered once for that sample (`Episode.parts`), and the episode says so (``split_samples``).

Limits: ``max_turns`` model turns; ``max_episode_tokens`` tokens after the initial prompt (model and
env tokens); ``max_tool_output_tokens`` tokens of one env message (cut and counted). A turn's sampling
budget is ``min(max_new_tokens, tokens left)``; tokens beyond it are cut from the engine's sample
(a prefix of a sample is a sample with the smaller budget, same logprobs).

Output per episode: an `Episode`, a `Completion` whose ``token_ids`` span all turns after the initial
prompt, ``token_mask`` 0 on env tokens with logprob 0.0, the episode's reward, its per-turn rewards
at each turn's last sampled token (`Episode.token_rewards`, a stream a turn-level estimator reads;
SWEET-RL, Zhou et al. 2025, credits turns instead of whole trajectories), turns, status and counts.

Departures from the peers: TRL's ``environment_factory`` re-applies the chat template to the grown
message list each turn (re-tokenization drift); here the history is only appended. LlamaGym trains on
re-rendered text; here ids are kept. An environment failure scores the episode 0 and counts it
instead of raising.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from posttrain.envs.base import EnvFailure, EnvSession
from posttrain.rollout.base import Completion, RolloutEngine, SamplingParams

_A, _O, _U = "@@posttrain-assistant@@", "@@posttrain-env@@", "@@posttrain-user@@"


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int = 4  # model turns per episode
    max_episode_tokens: int = 256  # tokens after the initial prompt, model and env tokens together
    max_tool_output_tokens: int = 64  # tokens of one env / tool message (cut beyond, counted)
    env_role: str = "user"  # the chat role env messages are rendered as ("tool" where the template has it)
    failure_reward: float = 0.0  # the reward of an episode whose environment failed


@dataclass(frozen=True)
class TurnFormat:
    """How a chat template appends one env message after a model turn, as token ids."""

    append_only: bool
    close: tuple[int, ...] = ()  # the template's tokens after an assistant message's content
    open: tuple[int, ...] = ()  # before an env message's content
    then: tuple[int, ...] = ()  # after it, through the next assistant generation prompt
    reason: str = ""  # why the template is not append-only


def _ids(tokenizer, text: str, split_special: bool = False) -> list[int]:
    if not text:
        return []
    kw = {"split_special_tokens": True} if split_special else {}
    return list(tokenizer(text, add_special_tokens=False, **kw)["input_ids"])


def _render(tokenizer, msgs, gen=False) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def _probe(tokenizer, role: str) -> str:
    """'' when every rendering of a probe conversation's prefixes extends the previous one, else why not."""
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r</think>a"},
            {"role": role, "content": "o"}, {"role": "assistant", "content": "<think>s</think>b"},
            {"role": role, "content": "p"}]
    prev = ""
    for k in range(1, len(msgs) + 1):
        gen = k < len(msgs) and msgs[k]["role"] == "assistant"
        for text in ([_render(tokenizer, msgs[:k])] + ([_render(tokenizer, msgs[:k], gen=True)] if gen else [])):
            if not text.startswith(prev):
                return f"the rendering of the first {k} probe message(s) does not extend the previous rendering"
            prev = text
    return ""


def turn_format(tokenizer, role: str = "user") -> TurnFormat:
    """The delta tokens of `tokenizer`'s chat template for an env message in `role` (see the module
    docstring); ``append_only=False`` with a reason when the template rewrites history."""
    if getattr(tokenizer, "chat_template", None) is None:
        return TurnFormat(False, reason="the tokenizer has no chat template")
    u = [{"role": "user", "content": _U}]
    try:
        p0 = _render(tokenizer, u, gen=True)
        a1 = _render(tokenizer, u + [{"role": "assistant", "content": _A}])
        o1 = _render(tokenizer, u + [{"role": "assistant", "content": _A}, {"role": role, "content": _O}], gen=True)
        why = _probe(tokenizer, role)
    except Exception as e:  # a template that refuses the role or the order
        return TurnFormat(False, reason=f"the chat template cannot render a '{role}' turn after an assistant turn ({e})")
    if why:
        return TurnFormat(False, reason=why)
    if not (a1.startswith(p0 + _A) and o1.startswith(a1) and o1[len(a1):].count(_O) == 1):
        return TurnFormat(False, reason="an assistant or env turn does not extend the conversation's rendering")
    close = a1[len(p0) + len(_A):]
    open_, then = o1[len(a1):].split(_O)
    return TurnFormat(True, tuple(_ids(tokenizer, close)), tuple(_ids(tokenizer, open_)), tuple(_ids(tokenizer, then)))


@dataclass
class Episode(Completion):
    """One episode as one completion over all its turns (see the module docstring).

    prompt_ids: the initial prompt. turn_ends: index in token_ids of each model turn's last token;
    turn_rewards: each turn's (step) reward; final: the reward given at the end (a tool env's
    ``reward()``); reward: the episode's, ``sum(turn_rewards) + final`` (``failure_reward`` when the
    environment failed). status: ``done`` (the env ended it), ``turn_limit``, ``token_limit``, or the
    failure kind (``env_error``, ``env_timeout``, ``env_garbage``). counts: tool calls, tool errors,
    malformed calls, truncated outputs, failures. parts: for a template that is not append-only, one
    training sample per turn (each an `Episode` with its own prompt, that turn's reward in
    ``turn_rewards``, the episode's in ``reward``); empty otherwise. messages: the conversation as the
    model saw it (env text cut as its tokens were), for display and as an SFT transcript row
    (`posttrain.envs.transcripts`; it tokenizes back to the episode's ids).
    """

    prompt_ids: list[int] = field(default_factory=list)
    reward: float = 0.0
    final: float = 0.0
    turn_ends: list[int] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    turns: int = 0
    status: str = ""
    counts: Counter = field(default_factory=Counter)
    parts: list["Episode"] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status.startswith("env_")

    def token_rewards(self) -> list[float]:
        """Per token: each turn's reward at that turn's last sampled token and ``final`` at the last
        turn's, 0 elsewhere (a whole episode's sums to ``reward``)."""
        out = [0.0] * len(self.token_ids)
        for end, r in zip(self.turn_ends, self.turn_rewards):
            out[end] += r
        if self.turn_ends:
            out[self.turn_ends[-1]] += self.final
        return out

    def samples(self) -> list["Episode"]:
        """The training samples: the episode itself, or its per-turn parts (not append-only)."""
        return self.parts or [self]


class _State:
    """The growing record of one episode while it runs."""

    def __init__(self, session: EnvSession, prompt_ids: list[int], messages: list[dict]):
        self.session, self.prompt_ids, self.messages = session, prompt_ids, messages
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.logp: list[float] = []
        self.turn_ends: list[int] = []
        self.turn_rewards: list[float] = []
        self.parts: list[Episode] = []
        self.status, self.finish, self.version, self.final = "", "stop", 0, 0.0
        self.split_env_tokens = 0  # env tokens of a split episode (they sit in the next part's prompt)
        self.counts: Counter = Counter()

    @property
    def used(self) -> int:
        return len(self.ids) + self.split_env_tokens

    def append(self, ids, mask: int, logp=None):
        self.ids += ids
        self.mask += [mask] * len(ids)
        self.logp += list(logp) if logp is not None else [0.0] * len(ids)


def _initial_messages(system: str | None, first: str | None, row: dict) -> list[dict]:
    prompt = row.get("prompt")
    msgs = [dict(m) for m in prompt] if isinstance(prompt, list) else []
    user = [x for x in ((prompt if isinstance(prompt, str) else None), first) if x]
    if user:
        msgs.append({"role": "user", "content": "\n\n".join(user)})
    if not any(m["role"] == "user" for m in msgs):
        msgs.append({"role": "user", "content": ""})
    if system:
        if msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + system}
        else:
            msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _open(session: EnvSession, row: dict, tokenizer) -> _State:
    from posttrain.data import encode_prompt

    try:
        system, first = session.open(row)
    except EnvFailure as e:
        st = _State(session, [], [])
        _fail(st, e)
        return st
    msgs = _initial_messages(system, first, row)
    return _State(session, encode_prompt(tokenizer, msgs), msgs)


def _fail(st: _State, e: EnvFailure) -> None:
    st.status = e.kind
    st.counts[e.kind] += 1
    st.messages.append({"role": "env-error", "content": str(e)})


def _env_turn(st: _State, fmt: TurnFormat, text: str, tokenizer, limits: EpisodeLimits) -> bool:
    """Append the env message `text` (cut at ``max_tool_output_tokens``, counted; the message recorded is
    the cut text the model sees) to the episode: as template deltas with mask 0 -- close (what the
    template adds after the model's turn and the model did not sample) + open + text + then -- or, for
    a template that is not append-only, as a message of the next split sample. False when no room is
    left for a model token (the caller ends the episode at the token limit)."""
    body = _ids(tokenizer, text, split_special=True)
    if len(body) > limits.max_tool_output_tokens:
        body = body[: limits.max_tool_output_tokens]
        text = tokenizer.decode(body)
        st.counts["truncated_outputs"] += 1
    st.messages.append({"role": limits.env_role, "content": text})
    if not fmt.append_only:
        st.counts["split_samples"] += 1
        st.split_env_tokens += len(body)
        return st.used < limits.max_episode_tokens
    close = list(fmt.close)
    k = next((k for k in range(len(close), 0, -1) if st.ids[-k:] == close[:k]), 0)
    delta = close[k:] + list(fmt.open) + body + list(fmt.then)
    if st.used + len(delta) >= limits.max_episode_tokens:
        return False
    st.append(delta, 0)
    return True


def _finish(st: _State, tokenizer, limits: EpisodeLimits) -> Episode:
    st.session.close()
    counts = st.counts + st.session.counts
    failed = st.status.startswith("env_")
    if failed:
        st.turn_rewards, st.final = [0.0] * len(st.turn_rewards), 0.0
    reward = limits.failure_reward if failed else sum(st.turn_rewards) + st.final
    text = tokenizer.decode([t for t, m in zip(st.ids, st.mask) if m], skip_special_tokens=True)
    ep = Episode(token_ids=st.ids, logprobs=st.logp, finish_reason=st.finish, text=text, token_mask=st.mask,
                 policy_version=st.version, prompt_ids=st.prompt_ids, reward=reward, final=st.final,
                 turn_ends=st.turn_ends, turn_rewards=st.turn_rewards, turns=len(st.turn_ends), status=st.status,
                 counts=counts, messages=st.messages)
    for k, p in enumerate(st.parts):  # not append-only: the episode's outcome on every per-turn sample
        p.turn_rewards, p.reward, p.status = [st.turn_rewards[k]], reward, st.status
        p.final = st.final if k == len(st.parts) - 1 else 0.0
    ep.parts = st.parts
    return ep


def _budget(st: _State, limits: EpisodeLimits, params: SamplingParams) -> int:
    return min(params.max_new_tokens, limits.max_episode_tokens - st.used)


def run_episodes(engine: RolloutEngine, tokenizer, sessions: Sequence[EnvSession], rows: Sequence[dict],
                 params: SamplingParams, limits: EpisodeLimits = EpisodeLimits(), fmt: TurnFormat | None = None) -> list[Episode]:
    """Roll out one episode per (session, row), all live episodes batched into one engine call per
    turn (``params.n`` is ignored: one sample per episode; a GRPO group is several sessions on one
    row). `fmt` defaults to `turn_format(tokenizer, limits.env_role)`.

    Returns the episodes in order. An environment failure ends that episode only (its status and
    counts say which); the engine's own errors are raised."""
    fmt = fmt or turn_format(tokenizer, limits.env_role)
    states = [_open(s, dict(r), tokenizer) for s, r in zip(sessions, rows, strict=True)]
    for turn in range(limits.max_turns):
        live = [st for st in states if not st.status]
        if not live:
            break
        inputs = [st.prompt_ids + st.ids if fmt.append_only else _split_prompt(st, tokenizer) for st in live]
        seed = None if params.seed is None else params.seed + 7919 * turn
        budget = max(_budget(st, limits, params) for st in live)
        sp = SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p, max_new_tokens=max(1, budget),
                            stop=params.stop, seed=seed)
        outs = engine.generate(inputs, sp)
        for st, inp, out in zip(live, inputs, outs, strict=True):
            _model_turn(st, inp, out[0], fmt, tokenizer, limits, params, last=turn == limits.max_turns - 1)
    for st in states:
        st.status = st.status or "turn_limit"
    return [_finish(st, tokenizer, limits) for st in states]


def _split_prompt(st: _State, tokenizer) -> list[int]:
    """A split episode's next sample: its prompt is the conversation so far, rendered once for it."""
    from posttrain.data import encode_prompt

    return encode_prompt(tokenizer, st.messages) if st.parts else st.prompt_ids


def _record_turn(st: _State, inp, comp: Completion, fmt: TurnFormat, tokenizer, limits: EpisodeLimits,
                 params: SamplingParams) -> str:
    """Append one sampled turn (cut to its budget) to the episode's ids, mask and messages; its text."""
    budget = _budget(st, limits, params)
    ids, logp = list(comp.token_ids[:budget]), list(comp.logprobs[:budget])
    st.finish = "length" if len(comp.token_ids) > budget else comp.finish_reason
    st.version = comp.policy_version
    text = tokenizer.decode(ids, skip_special_tokens=True)
    st.messages.append({"role": "assistant", "content": text})
    st.append(ids, 1, logp)
    st.turn_ends.append(len(st.ids) - 1)
    st.turn_rewards.append(0.0)
    if not fmt.append_only:
        st.parts.append(Episode(token_ids=ids, logprobs=logp, finish_reason=st.finish, text=text, token_mask=[1] * len(ids),
                                policy_version=comp.policy_version, prompt_ids=list(inp), turn_ends=[len(ids) - 1], turns=1))
    return text


def _model_turn(st: _State, inp, comp: Completion, fmt: TurnFormat, tokenizer, limits: EpisodeLimits,
                params: SamplingParams, last: bool) -> None:
    """Record one sampled turn, step the environment, append its reply (or end the episode)."""
    text = _record_turn(st, inp, comp, fmt, tokenizer, limits, params)
    try:
        step = st.session.step(text)
        st.turn_rewards[-1] = step.reward
        if step.done:
            st.final = st.session.final_reward()
            st.status = "done"
            return
    except EnvFailure as e:
        _fail(st, e)
        return
    if last or st.used >= limits.max_episode_tokens:
        st.status = "turn_limit" if last else "token_limit"
        return
    if not _env_turn(st, fmt, step.observation or "", tokenizer, limits):
        st.status = "token_limit"
