"""Rows in and out of `posttrain data`: the formats the training stages read, written back as jsonl.

`load_table(DataIn)` reads every row with `posttrain.data.read_rows` (source column names kept, so a
written row is the input row plus any new columns), applies ``data.columns`` to a copy (the *view*
the tools read: ``prompt``, ``answer``, ...), detects or checks the kind, and validates each view as
`posttrain.data.load_examples` does (a bad row is a `DataError` naming the file, the row and the
field, or with ``on_error=skip`` a counted skip). ``task:SPEC`` generates the task's RL rows.

Text normalization (`normalize`, `words`) is the one decontamination and deduplication share:
lowercase, every run of characters that are not letters or digits becomes one space (punctuation,
LaTeX backslashes and braces, the ``_`` of ``\\w``), split on whitespace.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from posttrain.errors import UserError

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """Lowercase, punctuation (anything not a letter or digit) to single spaces, stripped."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def words(text: str) -> list[str]:
    return normalize(text).split()


def as_text(value: Any) -> str:
    """A text field as one string: a string, the contents of a message list, or a list of strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [m.get("content", "") if isinstance(m, dict) else m for m in value]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def is_text(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, str) or (isinstance(m, dict) and isinstance(m.get("content"), str)) for m in value)


@dataclass
class Item:
    """One row: `data` as read (source column names; written back), `view` after the column map,
    `ex` the validated `posttrain.data.Example`, `added` the new columns a tool computed."""
    index: int  # 0-based position among the rows read
    row: Any  # posttrain.data.Row: .data, .source, .row (1-based line / row), .where()
    view: dict
    ex: Any
    added: dict = field(default_factory=dict)

    @property
    def line(self) -> int:
        return self.row.row

    def prompt_text(self) -> str:
        return as_text(self.ex.prompt) if self.ex.prompt is not None else ""

    def completion_text(self) -> str:
        """The row's response: completion (the whole text of a language-modeling row), chosen, the
        steps of a stepwise row, else the reference answer."""
        ex = self.ex
        for v in (ex.completion, ex.chosen, ex.steps, ex.answer):
            if v:
                return as_text(v) if not isinstance(v, str) else v
        return ""

    def texts(self, fields: Iterable[str] = ()) -> list[str]:
        """Text segments of `fields` (view names; a field this row lacks is a DataError naming it),
        or of every text-valued column."""
        fields = list(fields)
        if not fields:
            return [as_text(v) for v in self.view.values() if is_text(v)]
        out = []
        for f in fields:
            if f not in self.view or not is_text(self.view[f]):
                from posttrain.data.sources import DataError

                have = ", ".join(sorted(k for k, v in self.view.items() if is_text(v)))
                raise DataError(f"{self.row.where(f)}: missing or not text (text fields here: {have})")
            out.append(as_text(self.view[f]))
        return out

    def out_row(self) -> dict:
        return {**self.row.data, **self.added}


@dataclass
class Table:
    items: list[Item]
    source: str
    kind: str
    rows: int  # rows read (before skips)
    skipped: int = 0
    first_errors: list[str] = field(default_factory=list)
    task: Any = None  # the posttrain.tasks.Task of task: data

    def summary(self) -> dict:
        return {"source": self.source, "kind": self.kind, "rows_read": self.rows, "rows": len(self.items),
                "skipped_rows": self.skipped, "first_errors": self.first_errors}


def _task_rows(spec: str, limit: int):
    from posttrain.tasks import load_task_spec

    try:
        task = load_task_spec(spec)
    except (KeyError, ValueError, TypeError) as e:
        from posttrain.config import ConfigError

        raise ConfigError(f"data.path 'task:{spec}': {e}") from None
    return task, task.rl_rows(limit or 1000)


def load_table(d, *, require: str = "") -> Table:
    """The rows of `d` (a `DataIn`, or anything with path, kind, columns, on_error, limit)."""
    from posttrain.data.formats import KINDS, _parse, detect_kind
    from posttrain.data.sources import DataError, Row, read_rows

    if not d.path:
        raise UserError(f"no input rows: give --data FILE{require}")
    task = None
    if d.path.startswith("task:"):
        task, dicts = _task_rows(d.path[len("task:"):], d.limit)
        rows = [Row(r, d.path, i) for i, r in enumerate(dicts, start=1)]
    else:
        rows = read_rows(d.path, on_error=d.on_error)
        if d.limit:
            rows = rows[: d.limit]
    source = rows[0].source if rows else str(d.path)
    columns = dict(d.columns or {})
    present = set().union(*(r.data for r in rows if r.error is None)) if rows else set()
    for old, new in columns.items():
        if not old or not new:
            raise DataError(f"data.columns: '{old}={new}': expected SOURCE=FIELD pairs such as question=prompt")
        if old not in present:
            raise DataError(f"{source}: no column '{old}' (--data.columns maps it to '{new}'; the rows have: "
                            f"{', '.join(sorted(map(str, present))) or 'none'})")
    views = []
    for r in rows:
        data = dict(r.data)
        for old, new in columns.items():
            if old in data:
                data[new] = data.pop(old)
        views.append(Row(data, r.source, r.row, r.error))
    kind = d.kind or None
    if kind is None:
        readable = next((v for v in views if v.error is None), None)
        if readable is None:
            raise DataError(f"{source}: no rows" + (f" that could be read (first: {rows[0].error})" if rows else ""))
        kind = detect_kind(set(readable.data), source=source)
    if kind not in KINDS:
        raise DataError(f"unknown dataset kind '{kind}' (known: {', '.join(KINDS)})")
    table = Table([], source, kind, len(rows), task=task)
    for i, (r, v) in enumerate(zip(rows, views)):
        try:
            if v.error is not None:
                raise DataError(v.error)
            table.items.append(Item(i, r, v.data, _parse(v, kind)))
        except DataError as e:
            if d.on_error == "raise":
                raise
            table.skipped += 1
            if len(table.first_errors) < 5:
                table.first_errors.append(str(e))
    if not table.items:
        raise DataError(f"{source}: no usable rows ({table.skipped} skipped; first: "
                        f"{table.first_errors[0] if table.first_errors else 'none'})")
    return table


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
            n += 1
    return n


def read_jsonl_dicts(path: str | Path, what: str, check=None) -> list[dict]:
    """Every JSON object of a jsonl file; a bad line is a DataError naming the file and the line.
    `check(obj, where)`, when given, validates each object (`where` names the file and line)."""
    from posttrain.data.sources import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p}: no such file")
    out = []
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{p}: line {i}: expected a JSON object")
        if check is not None:
            check(obj, f"{p}: line {i}")
        out.append(obj)
    return out
