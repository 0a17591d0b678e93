"""Read rows from jsonl, json, parquet, csv, a saved `datasets` folder, a `datasets.Dataset`, or a list.

Every row keeps where it came from (`source`, 1-based `row`) so that validation errors can name the
file, the row and the field. Rows held in memory (a list of dicts, a `datasets.Dataset`) are named
by their Python index: ``rows[3]: field 'prompt': ...`` (``train_data[3]`` when a trainer's
``train_data=`` argument gave them). Column mapping renames source columns (e.g. GSM8K `question` -> `prompt`).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
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
    error: str | None = None  # set for a line that could not be read (kept so on_error="skip" can count it)
    indexed: bool = False  # held in memory: named `source[i]` with the 0-based Python index

    def where(self, field: str | None = None) -> str:
        """'FILE: line N' / 'FILE: row N' (1-based), or 'rows[i]' for in-memory rows; then the field."""
        if self.indexed:
            at = f"{self.source}[{self.row - 1}]"
        else:
            unit = "line" if self.source.endswith((".jsonl", ".jsonl.gz")) else "row"
            at = f"{self.source}: {unit} {self.row}"
        return f"{at}: field '{field}'" if field else at


DATA_FILES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # not gzip / CRC or length wrong; truncated; bad deflate data


def _one_line(e: Exception) -> str:
    """A library's exception message on one line (the CLI prints a `DataError` as one line)."""
    return " ".join(str(e).split())


def _is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _gzip_error(path: Path, line: int | None, e: Exception) -> DataError:
    """`line`: the line being read (None: unknown, or nothing read yet)."""
    if "Not a gzipped file" in str(e):
        return DataError(f"{path}: not a gzip file ({_one_line(e)}; drop the .gz from the name if the file is plain text)")
    return DataError(f"{path}: {f'line {line}: ' if line else ''}truncated or corrupt gzip data ({_one_line(e)})")


def _not_utf8(path: Path, raw: bytes, e: UnicodeDecodeError, line: int | None = None) -> str:
    """'PATH: line N: not valid UTF-8 (...)' for a decode error in `raw` (one line, or the whole file)."""
    start = raw.rfind(b"\n", 0, e.start) + 1
    if line is None:
        line = raw.count(b"\n", 0, e.start) + 1
    hint = "the file looks gzip-compressed: name it .gz" if raw[:2] == b"\x1f\x8b" else "save the file as UTF-8"
    return f"{path}: line {line}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start - start + 1}; {hint})"


def _byte_lines(path: Path) -> Iterable[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of a possibly gzipped file; gzip errors name the line reached."""
    i = 0
    try:
        with (gzip.open(path, "rb") if _is_gz(path) else open(path, "rb")) as f:
            for i, line in enumerate(f, start=1):
                yield i, line
    except _GZIP_ERRORS as e:
        raise _gzip_error(path, i + 1 if i else None, e) from None


def _read_text(path: Path) -> str:
    """The whole file (gunzipped if .gz) decoded as UTF-8 (a leading BOM dropped)."""
    try:
        with (gzip.open(path, "rb") if _is_gz(path) else open(path, "rb")) as f:
            raw = f.read()
    except _GZIP_ERRORS as e:
        raise _gzip_error(path, None, e) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(_not_utf8(path, raw, e)) from None


def _read_jsonl(path: Path) -> Iterable[Row]:
    """Rows of a jsonl file; a line that cannot be read becomes a Row with `error` set."""
    for i, raw in _byte_lines(path):
        try:
            line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield Row({}, str(path), i, error=_not_utf8(path, raw, e, line=i))
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield Row({}, str(path), i, error=f"{path}: line {i}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            yield Row({}, str(path), i, error=f"{path}: line {i}: expected a JSON object, got {type(obj).__name__}")
            continue
        yield Row(obj, str(path), i)


def _read_json(path: Path) -> Iterable[Row]:
    try:
        obj = json.loads(_read_text(path))
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


def _read_csv(path: Path) -> list[Row]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    rows = []
    try:
        for i, rec in enumerate(reader, start=1):
            if None in rec:  # more cells than the header has columns
                n = len(reader.fieldnames or [])
                error = f"{path}: row {i}: {n + len(rec[None])} cells, but the header has {n} columns"
                rows.append(Row({}, str(path), i, error=error))
            else:
                rows.append(Row(dict(rec), str(path), i))
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({_one_line(e)})") from None
    return rows


def _read_table(records: Iterable[Mapping], source: str, indexed: bool = False) -> Iterable[Row]:
    for i, rec in enumerate(records, start=1):
        if indexed and not isinstance(rec, Mapping):
            raise DataError(f"{source}[{i - 1}]: expected a dict of column values, got {type(rec).__name__}")
        yield Row(_to_python(dict(rec)), source, i, indexed=indexed)


def _to_python(value):
    """numpy arrays / scalars from parquet -> plain lists and Python scalars."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _to_python(value.tolist())
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value


def read_rows(source, columns: Mapping[str, str] | None = None, on_error: str = "raise", name: str | None = None) -> list[Row]:
    """Read every row of `source`; `columns` maps source column names to posttrain field names.

    `source`: a path (str or Path), a list of dicts or a `datasets.Dataset`. `name` is what errors
    call in-memory rows (default ``rows``, so ``rows[3]: field 'prompt'``); files are named by path.

    A jsonl line that cannot be read (not UTF-8, not JSON, not an object) raises a `DataError` naming
    the file and the line; with ``on_error="skip"`` it is returned as a `Row` whose `error` says why
    (for `load_examples` to count). A file that cannot be read at all always raises.
    """
    rows = []
    try:
        for r in _iter_source(source, name or "rows"):
            if r.error is not None and on_error != "skip":
                raise DataError(r.error)
            rows.append(r)
    except OSError as e:  # unreadable: permissions, a folder where a file was expected, ...
        raise DataError(f"{getattr(e, 'filename', None) or source}: cannot read ({e.strerror or e})") from None
    if columns:
        for r in rows:
            for old, new in columns.items():
                if old in r.data:
                    r.data[new] = r.data.pop(old)
    return rows


def _iter_source(source, name: str = "rows") -> Iterable[Row]:
    if isinstance(source, (list, tuple)):
        return _read_table(source, name, indexed=True)
    if not isinstance(source, (str, Path)):
        try:
            import datasets
        except ImportError:  # pragma: no cover
            datasets = None
        if datasets is not None and isinstance(source, datasets.Dataset):
            return _read_table(source, name, indexed=True)
        raise DataError(f"{name}: unsupported data source of type {type(source).__name__} "
                        "(expected a file or folder path, a list of dicts or a datasets.Dataset)")
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_folder(path)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return _read_json(path)
    if name.endswith(".parquet"):
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {_one_line(e)})") from None
        return _read_table(frame.to_dict("records"), str(path))
    if name.endswith(".csv"):
        return _read_csv(path)
    raise DataError(f"{path}: unknown file type (expected {', '.join(DATA_FILES)} or a folder saved by datasets)")


SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _read_folder(path: Path) -> Iterable[Row]:
    """A folder written by `datasets.save_to_disk` (a Dataset or a DatasetDict: its train split)."""
    if not any((path / m).is_file() for m in SAVED_MARKERS):
        files = sorted(p.name for p in path.iterdir() if p.name.lower().endswith(DATA_FILES))
        more = " ..." if len(files) > 3 else ""
        hint = f"; it holds {', '.join(files[:3])}{more}: give one file as the path" if files else ""
        raise DataError(
            f"{path}: not a dataset folder (expected a folder written by datasets.save_to_disk, with "
            f"dataset_info.json and state.json, or dataset_dict.json; or a data file: {', '.join(DATA_FILES)}){hint}"
        )
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as e:  # FileNotFoundError for missing shards, JSON errors, ...
        raise DataError(f"{path}: cannot load this datasets folder ({type(e).__name__}: {_one_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    return _read_table(ds, str(path))
