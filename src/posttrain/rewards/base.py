"""The reward-function interface and `combine_rewards`, which runs several of them and never crashes
on one bad item.

A reward function is a plain callable, called **by keyword**::

    fn(prompts=[...], completions=[...], completion_ids=[...], answer=[...], **other_columns) -> list[float | None]

Both common signatures work:
- posttrain's ``fn(prompts, completions, *, answer, **columns)`` (the built-ins), and
- TRL's GRPOTrainer style ``fn(completions, **kwargs)`` / ``fn(completions, answer, **kwargs)``
  (TRL calls ``reward_func(prompts=, completions=, completion_ids=, **dataset_columns, trainer_state=)``).

Each keyword is a list aligned with ``completions``. The signature is inspected once per function
(`call_reward`): a function that names a ``completions`` parameter, or takes only ``**kwargs``, is
called by keyword; one without ``**kwargs`` gets only the keywords it names; a function whose first
two parameters have other names (``lambda p, c, **kw``) gets prompts and completions by position, as
before. Keywords passed:
- ``prompts``, ``completions``: for a plain-text prompt, the prompt and the completion's decoded text.
  For a conversational prompt (a message list), TRL's shapes: ``prompts[i]`` is the message list as
  the data gave it and ``completions[i] == [{"role": "assistant", "content": text}]``. The built-in
  rewards (functions defined in posttrain, see `is_builtin_reward`) always get text: the prompt's
  message contents joined by newlines and the completion text. `combine_rewards` takes the TRL
  shapes as ``trl_prompts`` / ``trl_completions``; the RL trainer passes them for your data, not for
  built-in tasks (``task:NAME``: their prompts are message lists only to get the chat template, so
  every function gets text);
- ``completion_ids`` (token ids from the rollout) and ``completion_lengths`` when the trainer has them;
- ``answer`` (the reference answer), also under the TRL / verl names ``solution`` and ``ground_truth``
  when the data has no column of that name, and every other dataset column under its own name;
- not passed: TRL's ``trainer_state`` (posttrain has no `transformers.TrainerState`).
It returns one value per completion; ``None`` means "could not score this item" (e.g. no answer
could be extracted).

`combine_rewards` runs the functions in parallel daemon threads and scores every failure as
``FAILURE_SCORE`` (0.0) for that item, counting it per function:
- ``errors``: the call raised (or returned a wrong-length / non-numeric result). A batch call that
  raises is retried item by item, so one bad item costs only itself;
- ``timeouts``: the call did not finish within ``timeout_s`` (all its items count as errors too).
  Python threads cannot be killed: the stray thread is abandoned, not stopped. It is a daemon
  thread, so it does not keep the process from exiting;
- ``nans``: a NaN or infinite value;
- ``missing``: ``None`` (for answer-checking rewards: "no answer found").
The weighted total uses the scored values.

What users of the peers expect, and what posttrain does: in TRL and verl an exception in a reward
function propagates and stops training. posttrain keeps the run going when *some* items fail (one
malformed completion must not kill an RL run) but:
- the first failure of each reward function is shown once, as a warning with its function name,
  the exception (type and message) and how many of the batch's items failed
  (`RewardOutput.first_errors` keeps it too; per-step counts are the caller's to log);
- a function that fails on **every** item of a batch (an exception, a wrong-length or non-numeric
  result on all of them; typically a signature mismatch or a bug) raises `RewardError` (a
  `UserError`: the CLI prints it as one line) instead of training on a silent 0. Timeouts, NaNs and
  ``None`` on every item do not raise (a slow sandbox or a model that has not yet learnt the answer
  format is not a broken function); they are counted and warned about.
"""
from __future__ import annotations

import functools
import inspect
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from posttrain.errors import UserError

__all__ = ["RewardFn", "RewardOutput", "RewardError", "FAILURE_SCORE", "ANSWER_ALIASES", "call_reward",
           "combine_rewards", "is_builtin_reward", "reward_name"]

FAILURE_SCORE = 0.0
ANSWER_ALIASES = ("solution", "ground_truth")  # the reference answer's names in TRL examples / verl


class RewardFn(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float | None]: ...


class RewardError(UserError):
    """A reward function failed on every item of a batch (see the module docstring)."""


@dataclass(frozen=True)
class RewardOutput:
    """Scores of N completions under several reward functions.

    total: (N,) float32, sum_f weight_f * scores[f].
    scores: name -> (N,) float32, failures replaced by FAILURE_SCORE.
    valid: name -> (N,) bool, True where the function returned a finite number.
    weights, errors, timeouts, nans, missing: name -> weight / count.
    first_errors: name -> the first failure of that function in this batch ("TypeError: ..."), for
      functions with errors or a timeout.
    """

    total: torch.Tensor
    scores: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    weights: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    timeouts: dict[str, int] = field(default_factory=dict)
    nans: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)

    @property
    def num_failed(self) -> int:
        return sum(self.errors.values()) + sum(self.nans.values()) + sum(self.missing.values())


def reward_name(fn: Callable) -> str:
    """A readable name for a reward callable (unwraps functools.partial)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def is_builtin_reward(fn: Callable) -> bool:
    """True for posttrain's own reward callables (defined in a ``posttrain`` module; partials
    unwrapped): they read text, never TRL's conversational message lists."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None) if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__module__
    return (module or "").split(".")[0] == "posttrain"


def _unique_names(funcs) -> list[str]:
    names, seen = [], {}
    for fn, _ in funcs:
        base = reward_name(fn)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


# ---------------------------------------------------------------- calling one function by keyword
@dataclass(frozen=True)
class _CallStyle:
    keyword: bool  # prompts / completions by keyword (else the first two positional arguments)
    accepts: frozenset[str] | None  # the keywords it takes; None: anything (it has **kwargs)


_STYLES: dict[int, tuple[Callable, _CallStyle]] = {}  # id(fn) -> (fn, style); fn kept so the id stays its own
_STYLES_LOCK = threading.Lock()


def _call_style(fn: Callable) -> _CallStyle:
    """How to call `fn`, from its signature, inspected once per function object."""
    key = id(fn)
    with _STYLES_LOCK:
        hit = _STYLES.get(key)
    if hit is not None and hit[0] is fn:
        return hit[1]
    P = inspect.Parameter
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no introspectable signature (some builtins): the old positional call
        style = _CallStyle(False, None)
    else:
        var_kw = any(p.kind is P.VAR_KEYWORD for p in params)
        named = frozenset(p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY))
        positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.VAR_POSITIONAL)]
        keyword = "completions" in named or (var_kw and not positional)
        style = _CallStyle(keyword, None if var_kw else named)
    with _STYLES_LOCK:
        if len(_STYLES) > 4096:  # closures built per step must not grow this forever
            _STYLES.clear()
        _STYLES[key] = (fn, style)
    return style


def call_reward(fn: Callable, prompts: list, completions: list, columns: dict[str, list]) -> list:
    """Call one reward function on a batch, by keyword (see the module docstring); returns its result."""
    style = _call_style(fn)
    if style.keyword:
        kwargs = {**columns, "prompts": prompts, "completions": completions}
        if style.accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in style.accepts}
        return fn(**kwargs)
    cols = columns if style.accepts is None else {k: v for k, v in columns.items() if k in style.accepts}
    return fn(prompts, completions, **cols)


# ---------------------------------------------------------------- one function on a batch, failures marked
_ERROR = object()  # marks an item whose call raised


def _describe(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg[:300]}" if msg else type(exc).__name__


@dataclass
class _Result:
    values: list
    first_error: str | None = None
    exc: BaseException | None = None


def _run_one(fn, prompts, completions, columns) -> _Result:
    """Whole-batch call. If it raises, retry item by item, marking failing items _ERROR; a result
    of the wrong length (a contract violation, not an item failure) marks every item _ERROR."""
    n = len(completions)
    try:
        out = list(call_reward(fn, prompts, completions, columns))
    except Exception as e:
        res = _Result([_call_item(fn, prompts, completions, columns, i) for i in range(n)], _describe(e), e)
        return res
    if len(out) != n:
        return _Result([_ERROR] * n, f"returned {len(out)} values for {n} completions")
    return _Result(out)


def _call_item(fn, prompts, completions, columns, i):
    cols = {k: v[i : i + 1] for k, v in columns.items()}
    try:
        res = list(call_reward(fn, prompts[i : i + 1], completions[i : i + 1], cols))
    except Exception:
        return _ERROR
    return res[0] if len(res) == 1 else _ERROR


def _score(values: list):
    """-> (scores list[float], valid list[bool], errors, nans, missing, first non-number or None)."""
    scores, valid = [], []
    errors = nans = missing = 0
    bad_value = None
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
                if bad_value is None:
                    bad_value = f"returned {v!r:.80} ({type(v).__name__}), not a number"
            if x is not None and math.isfinite(x):
                scores.append(x)
                valid.append(True)
                continue
            if x is not None:
                nans += 1
        scores.append(FAILURE_SCORE)
        valid.append(False)
    return scores, valid, errors, nans, missing, bad_value


# ---------------------------------------------------------------- threads that never block exit
_PENDING = object()  # a task that did not finish in time


def _run_daemon(tasks: list[Callable[[], object]], max_workers: int, timeout_s: float) -> list:
    """Run `tasks` on up to `max_workers` daemon threads; their results in order, `_PENDING` for those
    not finished after `timeout_s`. Unfinished tasks are abandoned: a daemon thread is not joined at
    interpreter exit (ThreadPoolExecutor's workers are), and a worker starts no task after the deadline."""
    results: list = [_PENDING] * len(tasks)
    lock, finished = threading.Lock(), threading.Event()
    state = {"next": 0, "left": len(tasks), "stop": False}

    def worker():
        while True:
            with lock:
                if state["stop"] or state["next"] >= len(tasks):
                    return
                i = state["next"]
                state["next"] += 1
            try:
                r = tasks[i]()
            except BaseException as e:  # _run_one catches Exception; this is a last resort
                r = _Result([], _describe(e), e)
            with lock:
                if not state["stop"]:
                    results[i] = r
                state["left"] -= 1
                if state["left"] == 0:
                    finished.set()

    if not tasks:
        return results
    for _ in range(max(1, min(max_workers, len(tasks)))):
        threading.Thread(target=worker, name="posttrain-reward", daemon=True).start()
    finished.wait(timeout_s)
    with lock:
        state["stop"] = True
        return list(results)


_WARNED: set[tuple[str, str]] = set()  # (reward name, kind): the first failure is shown once per process


def _warn_once(name: str, kind: str, msg: str) -> None:
    if (name, kind) in _WARNED:
        return
    _WARNED.add((name, kind))
    from posttrain.logging import warn

    warn(msg + " (shown once per reward function; later failures are only counted)")


def combine_rewards(
    funcs_with_weights: Sequence[tuple[RewardFn, float]],
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: dict[str, Sequence] | None = None,
    *,
    max_workers: int = 4,
    timeout_s: float = 60.0,
    trl_prompts: Sequence | None = None,
    trl_completions: Sequence | None = None,
) -> RewardOutput:
    """Run every (fn, weight) on the batch in parallel daemon threads; see the module docstring.

    `prompts` / `completions` are text. `trl_prompts` / `trl_completions`, when given, are the same
    items in TRL's shapes (message lists for conversational prompts, text otherwise); functions that
    are not built-ins (`is_builtin_reward`) get those instead.
    Raises `RewardError` when a function fails on every item of a non-empty batch."""
    prompts, completions = list(prompts), list(completions)
    columns = {k: list(v) for k, v in (columns or {}).items()}
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} completions")
    for key, col in columns.items():
        if len(col) != n:
            raise ValueError(f"column '{key}' has {len(col)} values for {n} completions")
    if "answer" in columns:
        for alias in ANSWER_ALIASES:
            columns.setdefault(alias, columns["answer"])
    trl = (list(trl_prompts if trl_prompts is not None else prompts),
           list(trl_completions if trl_completions is not None else completions))
    if len(trl[0]) != n or len(trl[1]) != n:
        raise ValueError(f"{len(trl[0])} trl_prompts and {len(trl[1])} trl_completions for {n} completions")
    funcs = list(funcs_with_weights)
    names = _unique_names(funcs)
    results = _run_daemon([functools.partial(_run_one, fn, *((prompts, completions) if is_builtin_reward(fn) else trl), columns)
                           for fn, _ in funcs], max_workers, timeout_s)
    total = torch.zeros(n, dtype=torch.float32)
    out = dict(scores={}, valid={}, weights={}, errors={}, timeouts={}, nans={}, missing={}, first_errors={})
    broken: list[tuple[str, str, BaseException | None]] = []
    for name, (_, weight), res in zip(names, funcs, results):
        timed_out = res is _PENDING
        values = [_ERROR] * n if timed_out or len(res.values) != n else res.values
        scores, valid, errors, nans, missing, bad_value = _score(values)
        first = f"timed out after {timeout_s:g} s" if timed_out else (res.first_error or bad_value)
        out["scores"][name] = torch.tensor(scores, dtype=torch.float32)
        out["valid"][name] = torch.tensor(valid, dtype=torch.bool)
        out["weights"][name] = float(weight)
        out["errors"][name], out["nans"][name], out["missing"][name] = errors, nans, missing
        out["timeouts"][name] = int(timed_out)
        if errors and first:
            out["first_errors"][name] = first
            if timed_out:
                _warn_once(name, "timeout", f"reward '{name}' {first} on a batch of {n} completions (scored {FAILURE_SCORE})")
            elif errors < n:
                _warn_once(name, "error", f"reward '{name}' failed on {errors}/{n} completions (scored {FAILURE_SCORE}); "
                                          f"first error: {first}")
        if n and errors == n and not timed_out:
            broken.append((name, first or "no result", res.exc))
        total += float(weight) * out["scores"][name]
    if broken:
        name, first, exc = broken[0]
        others = f" (also failing on every item: {', '.join(b[0] for b in broken[1:])})" if len(broken) > 1 else ""
        raise RewardError(
            f"reward function '{name}' failed on all {n} completions of a batch: {first}{others}. It is called by "
            "keyword as fn(prompts=, completions=, completion_ids=, answer=, <dataset columns>=, ...) with lists "
            "of text (of message lists for conversational prompts, as TRL); see posttrain.rewards.base"
        ) from exc
    return RewardOutput(total=total, **out)
