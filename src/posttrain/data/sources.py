"""Read rows from jsonl, json, parquet, csv, a saved `datasets` folder, a `datasets.Dataset`, or a list.

Every row keeps where it came from (`source`, 1-based `row`) so that validation errors can name the
file, the row and the field. Column mapping renames source columns (e.g. GSM8K `question` -> `prompt`).
"""
from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from posttrain.errors import UserError


class DataError(UserError, ValueError):
    """A bad input row or file; the message names the source, the row and the field."""


@dataclass
class Row:
    data: dict[str, Any]
    source: str
    row: int  # 1-based; the line number for jsonl

    def where(self, field: str | None = None) -> str:
        unit = "line" if self.source.endswith((".jsonl", ".jsonl.gz")) else "row"
        at = f"{self.source}: {unit} {self.row}"
        return f"{at}: field '{field}'" if field else at


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> Iterable[Row]:
    with _open_text(path) as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {i}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {i}: expected a JSON object, got {type(obj).__name__}")
            yield Row(obj, str(path), i)


def _read_json(path: Path) -> Iterable[Row]:
    with _open_text(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list):
        obj = next(iter(obj.values()))
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of objects")
    for i, rec in enumerate(obj, start=1):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: row {i}: expected a JSON object, got {type(rec).__name__}")
        yield Row(rec, str(path), i)


def _read_table(records: Iterable[Mapping], source: str) -> Iterable[Row]:
    for i, rec in enumerate(records, start=1):
        yield Row(_to_python(dict(rec)), source, i)


def _to_python(value):
    """numpy arrays / scalars from parquet -> plain lists and Python scalars."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _to_python(value.tolist())
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value


def read_rows(source, columns: Mapping[str, str] | None = None) -> list[Row]:
    """Read every row of `source`; `columns` maps source column names to posttrain field names."""
    rows = list(_iter_source(source))
    if columns:
        for r in rows:
            for old, new in columns.items():
                if old in r.data:
                    r.data[new] = r.data.pop(old)
    return rows


def _iter_source(source) -> Iterable[Row]:
    if isinstance(source, list):
        return _read_table(source, "<list>")
    if not isinstance(source, (str, Path)):
        try:
            import datasets
        except ImportError:  # pragma: no cover
            datasets = None
        if datasets is not None and isinstance(source, datasets.Dataset):
            return _read_table(source, "<datasets.Dataset>")
        raise DataError(f"unsupported data source of type {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        return _read_table(ds, str(path))
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return _read_json(path)
    if name.endswith(".parquet"):
        import pandas as pd

        return _read_table(pd.read_parquet(path).to_dict("records"), str(path))
    if name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            return list(_read_table(csv.DictReader(f), str(path)))
    raise DataError(f"{path}: unknown file type (expected .jsonl, .json, .parquet, .csv or a datasets folder)")
