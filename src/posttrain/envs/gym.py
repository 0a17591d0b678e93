"""Any gymnasium environment as a game-style environment: text observations in, text actions out.

    from posttrain.envs.gym import GymEnv
    env = GymEnv("CliffWalking-v1", format_observation=lambda s: f"You are on square {s}.",
                 action_names=["up", "right", "down", "left"])
    text, info = env.reset(seed=0)          # the game-style protocol of `posttrain.envs.base`
    text, reward, terminated, truncated, info = env.step("I go right")

The shape follows LlamaGym (Pandey, 2024, github.com/KhoomeiK/LlamaGym): an agent is a gymnasium
loop around a chat model plus three pieces the user writes, a system prompt, ``format_observation``
(observation -> text) and ``extract_action`` (the model's text -> an action). Here they are
constructor arguments (or methods to override in a subclass, as LlamaGym's ``Agent``), and the wrapper
is an *environment* (``reset`` / ``step`` on text) that the project's multi-turn rollout drives, so any
trainer and ``posttrain eval --env`` work on it unchanged.

Departures from LlamaGym:

- **An action the parser cannot read is not played** (``on_invalid="retry"``, the default). LlamaGym's
  example parsers fall back to action 0; that plays a move the model never chose and credits its
  outcome to the model's text, which teaches nothing about the format and adds noise to the reward.
  Here the environment stays where it was, the model is told that its reply was not read (with the
  valid actions), the turn scores ``invalid_reward`` (0 by default) and uses one of the episode's
  turns (``rl.max_turns`` bounds it; ``max_invalid_actions`` > 0 truncates the episode after that
  many). Where the game's expected reward is negative, set ``invalid_reward`` to its worst outcome
  or lower: else stalling pays better than playing and RL learns it (``blackjack`` uses -1). It is
  counted: ``info["counts"]["invalid_actions"]`` goes into the episode's counts.
  ``on_invalid="default"`` is LlamaGym's behaviour (play ``default_action``; still counted and told).
- An action the parser reads but the action space does not contain (``Action: 7`` in a 4-action
  game) is an unreadable action too (told as such), not an exception.
- Token ids are kept across turns by the rollout (`posttrain.rollout.multiturn`); LlamaGym re-renders
  the chat as text each turn and trains it with TRL's PPO. Every step's reward is a per-turn reward
  (at that turn's last token), not only the episode's total.
- ``extract_action`` returns None for "could not read" instead of guessing.

gymnasium is an optional extra (``pip install 'posttrain[agents]'``): it is imported when a
`GymEnv` is built, never by ``import posttrain``. Built-ins: `posttrain.envs.gym_games`
(``frozenlake``, ``blackjack``).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

ON_INVALID = ("retry", "default")
EXTRA = "pip install 'posttrain[agents]' (or pip install gymnasium)"


def gymnasium():
    """The gymnasium module, or a `ConfigError` naming the extra to install."""
    try:
        import gymnasium as gym
    except ImportError:
        from posttrain.config import ConfigError

        raise ConfigError(f"the gymnasium adapter (posttrain.envs.gym) needs gymnasium: {EXTRA}") from None
    return gym


def choice_parser(names: Sequence[str], aliases: dict[str, int] | None = None) -> Callable[[str], int | None]:
    """A parser for a discrete action space whose action ``i`` is called ``names[i]``.

    Reads ``Action: X`` (X a name or a number) when the text has it, else the *last* action name,
    alias or stand-alone number below ``len(names)`` in the text (the model's final word on it, as
    LlamaGym's example reads the last digit; other numbers, "my sum is 21", are not actions);
    case-insensitive, whole words only ("21" is not action 1, "hitting" not "hit"). Returns None when
    there is none. ``Action: 7`` out of range is returned as is (the adapter rejects it, saying so)."""
    table = {n.lower(): i for i, n in enumerate(names)}
    table.update({k.lower(): v for k, v in (aliases or {}).items()})
    words = "|".join(re.escape(w) for w in sorted(table, key=len, reverse=True))
    token = rf"(?:{words}|\d+)" if words else r"\d+"
    explicit = re.compile(rf"\baction\s*[:=]?\s*({token})\b", re.I)
    anywhere = re.compile(rf"(?<![\w.-])({token})(?![\w]|\.\d)", re.I)

    def parse(text: str) -> int | None:
        m = explicit.findall(text) or [t for t in anywhere.findall(text) if not t.isdigit() or int(t) < len(names)]
        if not m:
            return None
        last = m[-1].lower()
        return int(last) if last.isdigit() else table[last]

    return parse


class GymEnv:
    """A gymnasium environment behind the game-style protocol (see the module docstring).

    env: a ``gymnasium.Env``, a registered id for ``gymnasium.make`` (with `make_kwargs`), or a
    zero-argument callable returning an env. format_observation(observation) -> text (default:
    ``str``); extract_action(text) -> action or None (default: `choice_parser` over `action_names`
    and `aliases`, more words for an action; without names, the last stand-alone number). intro: text
    before the first observation; action_help: how to reply, shown with an unreadable action
    (default: from `action_names`). system_prompt: given to the model as the system message (None:
    none). on_invalid, default_action, invalid_reward, max_invalid_actions: see the module docstring
    (in ``default`` mode the played action's reward counts, not `invalid_reward`).

    Episodes run side by side, so each needs its own gymnasium env: register a class that builds
    one in ``__init__`` (as `posttrain.envs.gym_games` and the README do), never one shared instance."""

    def __init__(self, env: Any, format_observation: Callable[[Any], str] | None = None,
                 extract_action: Callable[[str], Any] | None = None, *, action_names: Sequence[str] | None = None,
                 aliases: dict[str, int] | None = None,
                 system_prompt: str | None = None, intro: str = "", action_help: str = "",
                 on_invalid: str = "retry", default_action: Any = 0, invalid_reward: float = 0.0,
                 max_invalid_actions: int = 0, make_kwargs: dict | None = None):
        if on_invalid not in ON_INVALID:
            from posttrain.config import ConfigError

            raise ConfigError(f"GymEnv: on_invalid={on_invalid!r}; expected one of {', '.join(ON_INVALID)}")
        self.env = self._build(env, make_kwargs or {})
        self.action_names = list(action_names) if action_names else None
        if format_observation is not None:
            self.format_observation = format_observation
        if extract_action is not None:
            self.extract_action = extract_action
        elif self.action_names:
            self.extract_action = choice_parser(self.action_names, aliases)
        self.system_prompt, self.intro = system_prompt, intro
        self.action_help = action_help or self._default_help()
        self.on_invalid, self.default_action, self.invalid_reward = on_invalid, default_action, float(invalid_reward)
        self.max_invalid_actions = int(max_invalid_actions)
        self.invalid_actions = 0
        self.observation: Any = None

    @staticmethod
    def _build(env, make_kwargs: dict):
        if isinstance(env, str):
            return gymnasium().make(env, **make_kwargs)
        if make_kwargs:
            raise TypeError("GymEnv: make_kwargs are for an environment id (a string)")
        if not hasattr(env, "step") and callable(env):
            env = env()
        if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
            raise TypeError(f"GymEnv: {type(env).__name__} is not a gymnasium environment (no reset / step)")
        return env

    def _default_help(self) -> str:
        n = getattr(getattr(self.env, "action_space", None), "n", None)
        names = self.action_names
        if names:
            if len(names) == 1:
                return f"Reply {names[0]}."
            return f"Reply {', '.join(names[:-1])} or {names[-1]} (or 0-{len(names) - 1})."
        return f"Reply with an action number, 0-{int(n) - 1}." if n is not None else "Reply with a valid action."

    # -- the two pieces a user writes (LlamaGym's names) -------------------------------------------
    def format_observation(self, observation) -> str:
        """The text the model sees for a gymnasium observation (override, or pass a callable)."""
        return str(observation)

    def extract_action(self, text: str):
        """The action in the model's text, or None when there is none (override, or pass a callable).
        Default: a stand-alone number, for a discrete action space."""
        m = re.findall(r"(?<![\w.-])(\d+)(?![\w]|\.\d)", text)
        return int(m[-1]) if m else None

    def describe_end(self, observation, reward: float, terminated: bool) -> str:
        """The text after the last step (shown in transcripts; the rollout ends the episode there)."""
        return f"{self.format_observation(observation)}\nThe episode is over (reward {reward:g})."

    # -- the game-style protocol ---------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        self.invalid_actions = 0
        observation, info = self.env.reset(seed=seed, options=options)
        self.observation = observation
        text = self.format_observation(observation)
        return (f"{self.intro}\n{text}" if self.intro else text), dict(info or {})

    def _readable(self, action) -> bool:
        if action is None:
            return False
        space = getattr(self.env, "action_space", None)
        try:
            return space is None or bool(space.contains(action))
        except Exception:  # a parser's value of the wrong type for the space
            return False

    def step(self, text: str):
        action = self.extract_action(text)
        if self._readable(action):
            return self._play(action, "")
        self.invalid_actions += 1
        counts = {"invalid_actions": 1}
        what = "No action found" if action is None else f"{action!r} is not a valid action"
        if self.on_invalid == "default":
            played = f"{what}, so I played {self._name(self.default_action)}.\n"
            obs, reward, terminated, truncated, info = self._play(self.default_action, played)
            info["counts"] = counts
            return obs, reward, terminated, truncated, info
        truncated = 0 < self.max_invalid_actions <= self.invalid_actions
        note = f"{what}. {self.action_help}"
        if truncated:
            note += f" That was {self.invalid_actions} unreadable actions: the episode is over."
        return note, self.invalid_reward, False, truncated, {"counts": counts, "invalid_action": True}

    def _name(self, action) -> str:
        if self.action_names and isinstance(action, int) and 0 <= action < len(self.action_names):
            return self.action_names[action]
        return repr(action)

    def _play(self, action, prefix: str):
        before = self.observation
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.observation = observation
        reward = float(reward)
        if terminated or truncated:
            text = self.describe_end(observation, reward, bool(terminated))
        else:
            text = self.describe_step(before, action, observation)
        return prefix + text, reward, bool(terminated), bool(truncated), dict(info or {})

    def describe_step(self, before, action, observation) -> str:
        """The text after a step that did not end the episode (default: the new observation)."""
        return self.format_observation(observation)

    def close(self) -> None:
        fn = getattr(self.env, "close", None)
        if callable(fn):
            fn()
