"""Environments for multi-turn RL (tool style and game style), a registry and the built-ins.

    from posttrain.envs import ENVS, env_factory, make_session
    make = env_factory("guess:high=16")   # or any class with reset/step, or reset + tool methods

Built-ins (offline, seeded): ``guess`` (a number in [1, high], higher / lower feedback) and
``calculator`` (arithmetic word problems with a calculator tool), ``wordle``, and through the
gymnasium adapter (`posttrain.envs.gym`, ``pip install 'posttrain[agents]'``) ``frozenlake`` and
``blackjack``. See `posttrain.envs.base` for the two protocols and `posttrain.rollout.multiturn` for how episodes are rolled out.
"""
from posttrain.envs.base import (
    ENVS, EnvFailure, EnvSession, EnvSpec, GameSession, Step, ToolSession, call_with_timeout, env_factory, env_rows,
    make_session, parse_env_spec, register_env, style_of,
)
from posttrain.envs import calculator as _calculator  # noqa: F401  (registers)
from posttrain.envs import guess as _guess  # noqa: F401  (registers)
from posttrain.envs import gym_games as _gym_games  # noqa: F401  (registers frozenlake, blackjack; gymnasium on use)
from posttrain.envs import wordle as _wordle  # noqa: F401  (registers)
from posttrain.envs import tictactoe as _tictactoe  # noqa: F401  (registers; two-player, posttrain.rollout.selfplay)

__all__ = ["ENVS", "EnvFailure", "EnvSession", "EnvSpec", "GameSession", "Step", "ToolSession", "call_with_timeout",
           "env_factory", "env_rows", "make_session", "parse_env_spec", "register_env", "style_of"]
