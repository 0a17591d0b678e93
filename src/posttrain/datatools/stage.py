"""`posttrain data CMD`: pass rates, filters, deduplication, decontamination and selection of training rows.

    posttrain data passrate --data train.jsonl --model M --passrate.k 8 --out runs/pr
    posttrain data filter --data runs/pr/data.jsonl --filter.min_pass_rate 0 --filter.band exclusive --out runs/f
    posttrain data dedup --data train.jsonl --out runs/dd
    posttrain data decontaminate --data train.jsonl --benchmark gsm8k,math500 --out runs/dc
    posttrain data select --data runs/pr/data.jsonl --select.n 1000 --out runs/s1
    posttrain data transcripts --env guess:high=16,max_guesses=4 --rows 300 --model tiny-llama --out runs/tr

Every sub-command reads ``--data`` with the training stages' ``--data.*`` options (path, kind,
columns, on_error, limit) and writes into ``--out``:
- ``data.jsonl``: the rows kept, as they were read (source column names) plus any new columns,
  in their input order; a training stage reads it with the same ``--data.columns``;
- ``removed.jsonl``: the rows left out, each ``{"row": N, "reason": ..., "data": {...}}`` (N is the
  1-based row of the input, as errors name it);
- ``report.json`` and ``report.md``: what was read, kept and removed, and why.

``transcripts`` reads no ``--data``: it plays ``--env`` with the environment's scripted player
(`posttrain.envs.transcripts`) and writes the kept episodes as ``messages`` rows to ``data.jsonl``
(the others, with why, to ``removed.jsonl``); ``--model`` names the tokenizer that bounds the turns.

A non-empty ``--out`` that holds an earlier output is refused unless ``--overwrite true`` (or, for
``passrate``, ``--resume``, which continues it); nothing is written until the input has been read
and checked, so a bad row never costs an earlier output.
"""
from __future__ import annotations

import json
from pathlib import Path

from posttrain.config import ConfigError
from posttrain.datatools.config import CMDS, DataToolsConfig
from posttrain.datatools.table import Item, Table, write_jsonl
from posttrain.logging import console

HELP = "data tools: passrate, filter, dedup, decontaminate, select, transcripts (rows in, rows + report out)"
CONFIG = DataToolsConfig

MODULES = {"passrate": "passrate", "filter": "filters", "dedup": "dedup", "decontaminate": "decontam",
           "select": "select", "transcripts": "transcripts"}
OUTPUTS = ("data.jsonl", "removed.jsonl", "report.json", "report.md")


def check_out(cfg: DataToolsConfig, extra: tuple[str, ...] = ()) -> Path:
    """The output folder, refused when it holds an earlier output and neither overwrite nor (`extra`
    files present, passrate) resume allows writing into it."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    held = [n for n in OUTPUTS + extra if (out / n).exists()]
    if held and not cfg.overwrite and not (cfg.cmd == "passrate" and cfg.resume):
        raise ConfigError(f"--out {out} already holds {', '.join(held)} from an earlier run; "
                          "pick another --out or pass --overwrite true")
    return out


def write_outputs(out: Path, table: Table, kept: list[Item], removed: list[tuple[Item, str]], report: dict,
                  md_lines: list[str] = ()) -> dict:
    """Write data.jsonl / removed.jsonl / report.json / report.md; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "data.jsonl", (it.out_row() for it in kept))
    write_jsonl(out / "removed.jsonl", ({"row": it.line, "reason": why, "data": it.out_row()} for it, why in removed))
    report = {**table.summary(), "kept": len(kept), "removed": len(removed), **report}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    head = [f"# posttrain data {report.get('cmd', '')}", "",
            f"- input: {table.source} ({table.kind}): {table.rows} rows read, {table.skipped} skipped",
            f"- kept {len(kept)}, removed {len(removed)}", ""]
    (out / "report.md").write_text("\n".join(head + list(md_lines)) + "\n")
    console.print(f"data {report.get('cmd', '')}: kept {len(kept)} of {len(table.items)} rows -> {out / 'data.jsonl'}"
                  + (f" ({len(removed)} removed, reasons in {out / 'removed.jsonl'})" if removed else ""))
    return report


def run(cfg: DataToolsConfig) -> dict:
    if cfg.cmd not in CMDS:
        raise ConfigError(f"posttrain data: give a sub-command, one of {', '.join(CMDS)} "
                          f"(posttrain data dedup --data FILE --out DIR)" + (f"; got '{cfg.cmd}'" if cfg.cmd else ""))
    import importlib

    return importlib.import_module(f"posttrain.datatools.{MODULES[cfg.cmd]}").run(cfg)
