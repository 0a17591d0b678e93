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
    return TASKS.get(name)(**kwargs)
