"""Benchmark registry: each benchmark is a loader, a prompt template and an answer checker.

| name     | default file (under the data root)        | gold field | checking                     |
|----------|-------------------------------------------|------------|------------------------------|
| gsm8k    | gsm8k/test.jsonl                          | answer (after ``####``) | math-verify       |
| math500  | math/math500.jsonl                        | answer     | math-verify                  |
| aime24   | math-eval/aime24/test.jsonl               | answer     | math-verify                  |
| aime25   | math-eval/aime25/test.jsonl               | answer     | math-verify                  |
| amc23    | math-eval/amc23/test.jsonl                | answer     | math-verify                  |
| countdown| countdown/test.parquet                    | target, nums | `rewards.countdown`        |
| task:SPEC (``task:addition:scratchpad=1``, or a bare task name such as ``addition``) | generated offline | answer | the task's verifier |

The data root is, first to last: the ``data_root`` argument (``--data.root``), the ``POSTTRAIN_DATA``
environment variable, ``../shared/data`` relative to the working directory. A file given explicitly
(``--data.path``) overrides the default file. A missing file is an error that names every place looked.

Math prompts follow the Qwen2.5-Math evaluation template ("Please reason step by step, and put your
final answer within \\boxed{}."); answers are extracted with `rewards.math.extract_answer` (boxed,
<answer>, ``####``, last number) and compared with math-verify (`rewards.math.answers_match`).
Countdown keeps TinyZero's own prompt (from the parquet), as peers evaluate it.

Bad rows: a row whose gold answer is missing or empty raises `DataError` naming the file, row and
field, or with ``on_error="skip"`` is skipped and counted (`LoadedBenchmark.skipped`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from posttrain.data.sources import DataError, Row, read_rows
from posttrain.eval.metrics import Match, canonical_match
from posttrain.registry import Registry
from posttrain.rewards.math import answers_match, extract_answer

__all__ = [
    "Problem", "Benchmark", "LoadedBenchmark", "BENCHMARKS", "resolve_data_root", "load_benchmark",
    "MATH_INSTRUCTION",
]

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DATA_ENV = "POSTTRAIN_DATA"


@dataclass
class Problem:
    id: str  # stable id (the row number in the source, or the task row index); resume keys on it
    prompt: str | list[dict]  # text, or chat messages
    gold: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Benchmark:
    name: str
    default_file: str | None  # relative to the data root; None for generated tasks
    parse_row: Callable[[Row], Problem] | None  # Row -> Problem (raises DataError on a bad row)
    extract: Callable[[str], str | None] = extract_answer  # completion -> final answer (None: unparseable)
    match: Match = answers_match  # (predicted answer, gold) -> correct?
    group: Match = canonical_match  # two predicted answers in the same voting class?
    task: Any = None  # a posttrain.tasks.Task for generated benchmarks


@dataclass
class LoadedBenchmark:
    benchmark: Benchmark
    problems: list[Problem]
    source: str
    rows: int
    skipped: int = 0
    first_errors: list[str] = field(default_factory=list)


BENCHMARKS: Registry[Callable[[], Benchmark]] = Registry("benchmark")


def resolve_data_root(data_root: str | None = None) -> Path:
    """The data root: argument, else $POSTTRAIN_DATA, else ../shared/data relative to the CWD."""
    if data_root:
        return Path(data_root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.cwd() / ".." / "shared" / "data"


def _gold(row: Row, name: str = "answer") -> str:
    value = row.data.get(name)
    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
        raise DataError(f"{row.where(name)}: missing or empty gold answer")
    return str(value).strip()


def _text(row: Row, *names: str) -> str:
    for name in names:
        v = row.data.get(name)
        if isinstance(v, str) and v.strip():
            return v
    raise DataError(f"{row.where(names[0])}: missing or empty problem text (looked for {', '.join(names)})")


def _math_prompt(problem: str) -> list[dict]:
    return [{"role": "user", "content": f"{problem}\n{MATH_INSTRUCTION}"}]


def _gsm8k_row(row: Row) -> Problem:
    gold = _gold(row)
    if "####" not in gold:
        raise DataError(f"{row.where('answer')}: no '#### <number>' final answer in the GSM8K solution")
    final = gold.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise DataError(f"{row.where('answer')}: empty final answer after '####'")
    return Problem(str(row.row), _math_prompt(_text(row, "question")), final)


def _math_row(row: Row) -> Problem:
    return Problem(str(row.data.get("id", row.row)), _math_prompt(_text(row, "problem", "question")), _gold(row))


def _countdown_row(row: Row) -> Problem:
    target, nums = row.data.get("target"), row.data.get("nums")
    if target is None:
        raise DataError(f"{row.where('target')}: missing target number")
    if not isinstance(nums, list) or not nums:
        raise DataError(f"{row.where('nums')}: expected a non-empty list of numbers")
    prompt = row.data.get("prompt")
    if not (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict)):
        prompt = [{"role": "user", "content": f"Using the numbers {nums}, create an equation that equals {target}. "
                   "Use + - * / and each number once. Return the final answer in <answer> </answer> tags."}]
    return Problem(str(row.row), prompt, f"{int(target)}|{' '.join(str(int(n)) for n in nums)}")


def _countdown_match(pred: str, gold: str) -> bool:
    from posttrain.rewards.countdown import check_countdown

    target, _, nums = gold.partition("|")
    return check_countdown(pred, nums.split(), int(target))


def _register_math(name: str, file: str, parse=_math_row) -> None:
    BENCHMARKS.register(name)(lambda: Benchmark(name, file, parse))


_register_math("gsm8k", "gsm8k/test.jsonl", _gsm8k_row)
_register_math("math500", "math/math500.jsonl")
for _name in ("aime24", "aime25", "amc23"):
    _register_math(_name, f"math-eval/{_name}/test.jsonl")


@BENCHMARKS.register("countdown")
def _countdown() -> Benchmark:
    from posttrain.rewards.countdown import extract_equation

    return Benchmark("countdown", "countdown/test.parquet", _countdown_row, extract_equation, _countdown_match)


def task_benchmark(spec: str) -> Benchmark:
    """A generated benchmark from a built-in task spec ('addition:scratchpad=1')."""
    from posttrain.tasks import load_task_spec

    task = load_task_spec(spec)
    extract = getattr(task, "extract", None)
    if extract is None:
        from posttrain.rewards.countdown import extract_equation

        extract = extract_equation if task.name == "countdown" else extract_answer
    return Benchmark(f"task:{spec}", None, None, extract, lambda pred, gold: task.verify(pred, gold), task=task)


def get_benchmark(name: str) -> Benchmark:
    """A registered benchmark, or `task:SPEC` / a bare built-in task name for a generated one."""
    if name.startswith("task:"):
        return task_benchmark(name[len("task:"):])
    from posttrain.tasks import TASKS

    if name not in BENCHMARKS and name.partition(":")[0] in TASKS:
        return task_benchmark(name)
    return BENCHMARKS.get(name)()


def load_benchmark(
    name: str, path: str | None = None, data_root: str | None = None, limit: int = 0, on_error: str = "raise",
) -> LoadedBenchmark:
    """Problems of benchmark `name` (the first `limit` when > 0); see the module docstring."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    bench = get_benchmark(name)
    if bench.task is not None:
        rows = bench.task.eval_rows(limit or 200)
        probs = [Problem(str(i), r["prompt"], str(r["answer"]), {k: v for k, v in r.items() if k not in ("prompt", "answer")})
                 for i, r in enumerate(rows)]
        return LoadedBenchmark(bench, probs, bench.name, len(probs))
    file = Path(path) if path else resolve_data_root(data_root) / bench.default_file
    if not file.exists():
        raise DataError(
            f"benchmark '{name}': data file {file} not found. Pass the file with --data.path, or the folder "
            f"holding '{bench.default_file}' with --data.root or ${DATA_ENV} (default: ../shared/data from the CWD)"
        )
    rows = read_rows(file)
    if limit > 0:
        rows = rows[:limit]
    out = LoadedBenchmark(bench, [], str(file), len(rows))
    for row in rows:
        try:
            out.problems.append(bench.parse_row(row))
        except DataError as e:
            if on_error == "raise":
                raise
            out.skipped += 1
            if len(out.first_errors) < 5:
                out.first_errors.append(str(e))
    if not out.problems:
        raise DataError(f"benchmark '{name}': {file}: no usable rows ({out.skipped} skipped)")
    return out
