"""Environments for multi-turn RL: a registry (`ENVS`) and the session wrappers the rollout drives.

Two ways in, told apart by the class (a ``step`` method means game style):

- **tool style** (as TRL's ``environment_factory``): a class with ``reset(**row) -> str | None``
  (the first observation, added to the prompt; None: the row's ``prompt`` alone), public methods
  as tools (their typed signatures and docstrings become the tool schema shown to the model, see
  `posttrain.envs.tools`), and an optional ``reward()`` or ``reward(final_answer)`` -> float: the
  environment owns its reward. A model turn with tool calls gets the tool results back; a turn
  without one is the final answer and ends the episode.
- **game style** (gymnasium-like, as LlamaGym): ``reset(seed) -> (observation, info)`` and
  ``step(action_text) -> (observation, reward, terminated, truncated, info)``; every model turn is
  an action, every step's reward is a per-turn reward, the episode's reward is their sum; an
  ``info["counts"]`` mapping of names to ints (e.g. ``{"invalid_actions": 1}``) is added to the
  episode's counts.
- **two-player style** (self-play, as SPIRAL over TextArena's games): game style with a ``players``
  pair of seat names, ``current_player`` and per-seat observations and rewards from ``reset`` /
  ``step``; rolled out by `posttrain.rollout.selfplay` (one episode per seat), not by `make_session`.

Either style may define ``demonstrate() -> str``: the model turn a scripted player would write now
(a tool call, an answer, a guess); `posttrain.envs.transcripts` plays it to write SFT transcripts.
The name is reserved: never a tool.

Failures never stop a run: a malformed tool call or a raising tool becomes an error message back
to the model and a count (`posttrain.envs.tools`); an environment call (``reset`` / ``step`` /
``reward`` / a tool) that raises, returns garbage or runs past ``timeout_s`` raises `EnvFailure`,
which the rollout turns into a failed episode (reward 0, counted) while the other episodes go on.
A timed-out call keeps running in a daemon thread and its environment is abandoned: environments
are trusted Python (the user's own classes), so a thread is enough to bound their time; model-written
code must instead go through `posttrain.sandbox` (see DESIGN.md, "Agents, tools and untrusted code").
"""
from __future__ import annotations

import inspect
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from posttrain.registry import Registry

ENVS: Registry[Callable[..., Any]] = Registry("environment")

RESERVED = frozenset({"reset", "step", "reward", "close", "rows", "system_prompt", "demonstrate"})


class EnvFailure(Exception):
    """An environment call raised, returned garbage or timed out; `kind` is the count's name
    (``env_error``, ``env_timeout``, ``env_garbage``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def call_with_timeout(fn: Callable, *args, timeout_s: float = 0.0, what: str = "", **kwargs):
    """fn(*args, **kwargs); raises `EnvFailure` ``env_timeout`` after `timeout_s` (0: no limit) and
    ``env_error`` when it raises. The timed-out call is left running in a daemon thread."""
    if timeout_s <= 0:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise EnvFailure("env_error", f"{what or getattr(fn, '__name__', 'call')} raised {type(e).__name__}: {e}") from e
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name=f"posttrain-env-{what}")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise EnvFailure("env_timeout", f"{what or getattr(fn, '__name__', 'call')} ran past {timeout_s:g} s")
    if "error" in box:
        e = box["error"]
        raise EnvFailure("env_error", f"{what or getattr(fn, '__name__', 'call')} raised {type(e).__name__}: {e}") from e
    return box.get("value")


@dataclass(frozen=True)
class EnvSpec:
    """How a registered environment is driven: ``tool`` or ``game`` style, and a one-line description."""

    style: str
    description: str = ""


def is_two_player(cls) -> bool:
    """A two-player environment (class or instance): ``step`` and a ``players`` pair of seat names."""
    players = getattr(cls, "players", None)
    return callable(getattr(cls, "step", None)) and isinstance(players, (tuple, list)) and len(players) == 2


def style_of(cls) -> str:
    if is_two_player(cls):
        return "two_player"
    return "game" if callable(getattr(cls, "step", None)) else "tool"


def register_env(name: str, description: str = ""):
    """Class decorator: register an environment class (tool or game style, detected) under `name`."""

    def deco(cls):
        ENVS.register(name, needs=EnvSpec(style_of(cls), description or (cls.__doc__ or "").strip().split("\n")[0]))(cls)
        return cls

    return deco


def parse_env_spec(spec: str) -> tuple[str, dict]:
    """'guess' or 'guess:high=32,max_guesses=6' -> (name, options); numbers become ints / floats."""
    name, _, args = spec.partition(":")
    opts: dict = {}
    for part in filter(None, args.split(",")):
        k, _, v = part.partition("=")
        try:
            opts[k.strip()] = int(v)
        except ValueError:
            try:
                opts[k.strip()] = float(v)
            except ValueError:
                opts[k.strip()] = v
    return name.strip(), opts


def env_factory(spec: str | Callable) -> Callable[[], Any]:
    """A zero-argument factory of fresh environment instances: a registered name with options
    (``guess:high=32``), or a class / callable given directly."""
    if callable(spec):
        return spec
    name, opts = parse_env_spec(spec)
    cls = ENVS.get(name)
    params = inspect.signature(cls).parameters
    unknown = [k for k in opts if k not in params]
    if unknown:
        from posttrain.config import ConfigError

        known = ", ".join(f"{k}={p.default!r}" for k, p in params.items() if p.default is not p.empty) or "none"
        raise ConfigError(f"environment '{name}': unknown option(s) {unknown} (options and defaults: {known})")
    return lambda: cls(**opts)


def env_rows(factory: Callable[[], Any], n: int, seed: int = 0) -> list[dict]:
    """`n` rows for ``reset``: the environment's own ``rows(n, seed)`` when it has one, else
    ``{"seed": seed * 1_000_003 + i}`` (one game per seed; a GRPO group shares its row)."""
    probe = factory()
    own = getattr(probe, "rows", None)
    if callable(own):
        rows = list(own(n, seed))
    else:
        rows = [{"seed": seed * 1_000_003 + i} for i in range(n)]
    close = getattr(probe, "close", None)
    if callable(close):
        close()
    return rows


@dataclass
class Step:
    """What the environment says after one model turn. `observation` (None: nothing to say) is
    rendered as an env / tool turn; `reward` is this turn's reward; `done` ends the episode."""

    observation: str | None
    reward: float = 0.0
    done: bool = False


class EnvSession:
    """One episode of one environment instance, behind the calls the rollout makes:
    ``open(row) -> (system text or None, first user text or None)``, ``step(model_text) -> Step``,
    ``final_reward() -> float`` and ``counts`` (tool calls, tool errors, ... for this episode)."""

    def __init__(self, env, timeout_s: float = 10.0, max_output_chars: int = 4096):
        self.env, self.timeout_s, self.max_output_chars = env, timeout_s, max_output_chars
        self.counts: Counter = Counter()

    def _call(self, fn, *args, what: str, **kwargs):
        return call_with_timeout(fn, *args, timeout_s=self.timeout_s, what=what, **kwargs)

    def _text(self, x, what: str) -> str | None:
        if x is None or isinstance(x, str):
            return x
        raise EnvFailure("env_garbage", f"{what} returned {type(x).__name__}, expected str or None")

    def _reward(self, x, what: str) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x:
            raise EnvFailure("env_garbage", f"{what} returned reward {x!r}, expected a finite number")
        return float(x)

    def open(self, row: dict) -> tuple[str | None, str | None]:
        raise NotImplementedError

    def step(self, text: str) -> Step:
        raise NotImplementedError

    def final_reward(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        fn = getattr(self.env, "close", None)
        if callable(fn):
            try:
                self._call(fn, what="close")
            except EnvFailure:
                self.counts["close_errors"] += 1


class BrokenSession(EnvSession):
    """The session of an environment whose constructor failed: the episode fails at ``open``."""

    def __init__(self, failure: EnvFailure):
        super().__init__(None)
        self.failure = failure

    def open(self, row):
        raise self.failure

    def close(self) -> None:
        pass


class GameSession(EnvSession):
    """A gymnasium-like environment: every model turn is one ``step``; the reward is the sum of steps'."""

    def __init__(self, env, timeout_s: float = 10.0, max_output_chars: int = 4096):
        super().__init__(env, timeout_s, max_output_chars)
        self.total = 0.0

    def open(self, row: dict):
        out = self._call(self.env.reset, what="reset", seed=row.get("seed"))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise EnvFailure("env_garbage", f"reset returned {type(out).__name__}, expected (observation, info)")
        system = getattr(self.env, "system_prompt", None)
        return (system if isinstance(system, str) else None), self._text(out[0], "reset")

    def step(self, text: str) -> Step:
        out = self._call(self.env.step, text, what="step")
        if not (isinstance(out, tuple) and len(out) == 5):
            raise EnvFailure("env_garbage", f"step returned {type(out).__name__}, expected a 5-tuple")
        obs, reward, terminated, truncated, info = out
        r = self._reward(reward, "step")
        self.total += r
        counts = info.get("counts") if isinstance(info, dict) else None
        if isinstance(counts, dict):  # the env's own counts (invalid actions, ...) join the episode's
            self.counts.update({str(k): v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)})
        return Step(self._text(obs, "step"), r, bool(terminated) or bool(truncated))

    def final_reward(self) -> float:
        return 0.0  # all of it came with the steps


class ToolSession(EnvSession):
    """A tool-style environment: tool calls in a model turn run and their results go back; a turn
    with no tool call is the final answer and ends the episode; ``reward()`` scores it."""

    def __init__(self, env, timeout_s: float = 10.0, max_output_chars: int = 4096):
        from posttrain.envs.tools import collect_tools

        super().__init__(env, timeout_s, max_output_chars)
        self.tools = collect_tools(env)
        self.final: str | None = None

    def open(self, row: dict):
        from posttrain.envs.tools import tool_prompt

        first = self._call(self.env.reset, what="reset", **row)
        return tool_prompt(self.tools), self._text(first, "reset")

    def step(self, text: str) -> Step:
        from posttrain.envs.tools import parse_tool_calls, run_tool_calls

        calls = parse_tool_calls(text)
        if not calls:
            self.final = text
            return Step(None, 0.0, True)
        self.counts["tool_calls"] += len(calls)
        return Step(run_tool_calls(self, calls), 0.0, False)

    def final_reward(self) -> float:
        fn = getattr(self.env, "reward", None)
        if not callable(fn):
            return 0.0
        takes_answer = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in inspect.signature(fn).parameters.values())
        out = self._call(fn, *((self.final,) if takes_answer else ()), what="reward")
        return self._reward(out, "reward")


def make_session(factory: Callable[[], Any], timeout_s: float = 10.0, max_output_chars: int = 4096) -> EnvSession:
    """A fresh environment from `factory` in the session of its style. Building it may raise:
    `EnvFailure` (the episode fails)."""
    env = call_with_timeout(factory, timeout_s=timeout_s, what="environment constructor")
    if is_two_player(env):
        raise TypeError(f"{type(env).__name__} is a two-player environment: play it with posttrain.rollout.selfplay.run_games")
    cls = GameSession if style_of(env) == "game" else ToolSession
    return cls(env, timeout_s, max_output_chars)
