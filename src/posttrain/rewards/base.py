"""The reward-function interface and `combine_rewards`, which runs several of them and never crashes.

A reward function is a plain callable::

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

``columns`` are dataset columns, each a list aligned with ``completions`` (e.g. ``answer``,
``nums``, ``target``); a function takes the ones it needs by keyword and ignores the rest via
``**columns``. It returns one value per completion; ``None`` means "could not score this item"
(e.g. no answer could be extracted).

`combine_rewards` runs the functions in parallel threads and scores every failure as
``FAILURE_SCORE`` (0.0) for that item, counting it per function:
- ``errors``: the call raised (or returned a wrong-length / non-numeric result). A batch call that
  raises is retried item by item, so one bad item costs only itself;
- ``timeouts``: the call did not finish within ``timeout_s`` (all its items count as errors too);
  Python threads cannot be killed, so the stray thread is abandoned, not stopped;
- ``nans``: a NaN or infinite value;
- ``missing``: ``None`` (for answer-checking rewards: "no answer found").
The weighted total uses the scored values. Counts are plain ints: logging them is the caller's job.
"""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

__all__ = ["RewardFn", "RewardOutput", "FAILURE_SCORE", "combine_rewards", "reward_name"]

FAILURE_SCORE = 0.0


class RewardFn(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float | None]: ...


@dataclass(frozen=True)
class RewardOutput:
    """Scores of N completions under several reward functions.

    total: (N,) float32, sum_f weight_f * scores[f].
    scores: name -> (N,) float32, failures replaced by FAILURE_SCORE.
    valid: name -> (N,) bool, True where the function returned a finite number.
    weights, errors, timeouts, nans, missing: name -> weight / count.
    """

    total: torch.Tensor
    scores: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    weights: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    timeouts: dict[str, int] = field(default_factory=dict)
    nans: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)

    @property
    def num_failed(self) -> int:
        return sum(self.errors.values()) + sum(self.nans.values()) + sum(self.missing.values())


def reward_name(fn: Callable) -> str:
    """A readable name for a reward callable (unwraps functools.partial)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def _unique_names(funcs) -> list[str]:
    names, seen = [], {}
    for fn, _ in funcs:
        base = reward_name(fn)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


_ERROR = object()  # marks an item whose call raised


def _run_one(fn, prompts, completions, columns) -> list:
    """Whole-batch call. If it raises, retry item by item, marking failing items _ERROR; a result
    of the wrong length (a contract violation, not an item failure) marks every item _ERROR."""
    n = len(completions)
    try:
        out = list(fn(prompts, completions, **columns))
    except Exception:
        out = [_call_item(fn, prompts, completions, columns, i) for i in range(n)]
    return out if len(out) == n else [_ERROR] * n


def _call_item(fn, prompts, completions, columns, i):
    cols = {k: v[i : i + 1] for k, v in columns.items()}
    try:
        res = list(fn(prompts[i : i + 1], completions[i : i + 1], **cols))
    except Exception:
        return _ERROR
    return res[0] if len(res) == 1 else _ERROR


def _score(values: list):
    """-> (scores list[float], valid list[bool], errors, nans, missing)."""
    scores, valid = [], []
    errors = nans = missing = 0
    for v in values:
        if v is _ERROR:
            errors += 1
        elif v is None:
            missing += 1
        else:
            try:
                x = float(v)
            except (TypeError, ValueError):
                errors += 1
                x = None
            if x is not None and math.isfinite(x):
                scores.append(x)
                valid.append(True)
                continue
            if x is not None:
                nans += 1
        scores.append(FAILURE_SCORE)
        valid.append(False)
    return scores, valid, errors, nans, missing


def combine_rewards(
    funcs_with_weights: Sequence[tuple[RewardFn, float]],
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: dict[str, Sequence] | None = None,
    *,
    max_workers: int = 4,
    timeout_s: float = 60.0,
) -> RewardOutput:
    """Run every (fn, weight) on the batch in parallel threads; see the module docstring."""
    prompts, completions = list(prompts), list(completions)
    columns = {k: list(v) for k, v in (columns or {}).items()}
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} completions")
    for key, col in columns.items():
        if len(col) != n:
            raise ValueError(f"column '{key}' has {len(col)} values for {n} completions")
    funcs = list(funcs_with_weights)
    names = _unique_names(funcs)
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(funcs) or 1)))
    try:
        futures = [pool.submit(_run_one, fn, prompts, completions, columns) for fn, _ in funcs]
        wait(futures, timeout=timeout_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    total = torch.zeros(n, dtype=torch.float32)
    out = dict(scores={}, valid={}, weights={}, errors={}, timeouts={}, nans={}, missing={})
    for name, (_, weight), fut in zip(names, funcs, futures):
        timed_out = not fut.done() or fut.cancelled()
        values = [_ERROR] * n if timed_out else fut.result()
        scores, valid, errors, nans, missing = _score(values)
        out["scores"][name] = torch.tensor(scores, dtype=torch.float32)
        out["valid"][name] = torch.tensor(valid, dtype=torch.bool)
        out["weights"][name] = float(weight)
        out["errors"][name], out["nans"][name], out["missing"][name] = errors, nans, missing
        out["timeouts"][name] = int(timed_out)
        total += float(weight) * out["scores"][name]
    return RewardOutput(total=total, **out)
