"""The task protocol and registry.

A task produces plain rows (dicts) in the project's dataset formats, so they go through the same
validation as user data: ``sft`` rows are conversational prompt/completion, ``rl`` and ``eval`` rows
are conversational prompt + reference ``answer``. Eval problems are disjoint from training problems
by construction (a hash of the problem picks its split), not by luck.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from posttrain.registry import Registry

TASKS: Registry[Callable[..., "Task"]] = Registry("task")


def in_eval_split(key: str, eval_share: int = 10) -> bool:
    """Deterministic 1-in-`eval_share` membership of a problem in the held-out split."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % eval_share == 0


@dataclass
class Task:
    name: str

    def sft_rows(self, n: int, seed: int = 0, held_out: bool = False) -> list[dict]:
        raise NotImplementedError

    def rl_rows(self, n: int, seed: int = 1) -> list[dict]:
        raise NotImplementedError

    def eval_rows(self, n: int, seed: int = 2) -> list[dict]:
        raise NotImplementedError

    def verify(self, completion: str, answer: str) -> bool:
        raise NotImplementedError


def load_task_spec(spec: str) -> Task:
    """'addition' or 'addition:digits=3,scratchpad=1' -> Task."""
    name, _, args = spec.partition(":")
    kwargs = {}
    for part in filter(None, args.split(",")):
        k, _, v = part.partition("=")
        kwargs[k] = int(v) if v.lstrip("-").isdigit() else v
    return get_task(name, **kwargs)


def get_task(name: str, **kwargs) -> Task:
    """The task `name` built with `kwargs`; an unknown option or a value of the wrong type is a
    `ConfigError` naming the option and what the task takes."""
    import inspect

    from posttrain.config import ConfigError

    cls = TASKS.get(name)
    params = {k: p for k, p in inspect.signature(cls).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD}
    for k, v in kwargs.items():
        if k not in params:
            known = ", ".join(f"{n}={p.default!r}" for n, p in params.items()) or "none"
            raise ConfigError(f"task '{name}': unknown option '{k}' (options and defaults: {known})")
        default = params[k].default
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not isinstance(v, (int, float)):
            raise ConfigError(f"task '{name}': option '{k}' must be a number, got {v!r}")
    return cls(**kwargs)
