"""`posttrain data decontaminate`: remove training rows that share word n-grams with test problems.

    posttrain data decontaminate --data train.jsonl --data.columns question=prompt --benchmark gsm8k --out runs/dc
    posttrain data decontaminate --data train.jsonl --decontam.against my_test.jsonl --out runs/dc

The test: every problem of each ``--benchmark`` (loaded as `posttrain eval` loads it, under
``--data.root``; a problem's text is its prompt without the evaluation instruction, plus its gold
answer when that is a string) and every row of each ``--decontam.against`` file (all its text
columns). Both sides are normalized with `posttrain.datatools.table.words` (lowercase, punctuation
and LaTeX markup dropped), so a changed comma, capital or ``\\frac`` does not hide an overlap.

A training row (its ``--decontam.fields``, else every text column) overlaps a test problem when they
share a ``--decontam.n``-word sequence (13, as GPT-3, Brown et al. 2020, "Language models are
few-shot learners", appendix C). The test n-grams are built once into a hash set; each training
text's n-grams are looked up in it, so the cost is linear in the training text.

Departures from GPT-3's procedure:
- a test problem shorter than n words (but with at least ``--decontam.min_n``) is matched whole, as
  one contiguous word sequence (GPT-3 used the problem's shortest-n-gram, *if* shorter than 13,
  across its benchmarks; a fixed floor keeps "what is 2 + 3" from matching everywhere). Problems
  shorter than ``min_n`` words are never matched, and counted;
- an n-gram found in more than ``--decontam.max_benchmark_freq`` test problems is taken for template
  text (shared instructions, answer formats) and ignored, as GPT-3 ignored n-grams frequent in its
  training data (their threshold was over documents, this one is over the test set);
- a row is removed whole (GPT-3 removed the matched span plus 200 characters either side of it, and
  split documents); a training row is one example;
- ``--decontam.min_coverage`` (default 0: any shared n-gram) can ask for a share of the problem's
  n-grams to be shared before a row is flagged, trading recall for precision;
- the text fields are checked separately (no n-gram spans two fields), and a problem's prompt and
  gold answer are separate texts (a short answer alone is never matched whole).

Outputs: ``data.jsonl`` (rows kept), ``removed.jsonl`` (each reason names the benchmark, the test
problem id and a matched n-gram), ``report.json`` with per-benchmark counts (rows overlapping,
distinct test problems hit).

`overlap()` is the reusable core; `eval_overlap()` is what `posttrain eval` calls to warn when the
benchmark it scores overlaps the training data of the run folder the model comes from.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

from posttrain.config import ConfigError
from posttrain.datatools.config import DataToolsConfig
from posttrain.datatools.table import as_text, is_text, words

__all__ = ["Hit", "NgramIndex", "overlap", "benchmark_texts", "against_texts", "eval_overlap", "run"]


class Hit(NamedTuple):
    test_id: str
    ngram: str  # the first shared n-gram (normalized words), or the whole short problem
    shared: int  # distinct n-grams of the problem found in the training text
    coverage: float  # shared / the problem's counted n-grams


def _segments(text) -> list[str]:
    return [text] if isinstance(text, str) else [t for t in text if isinstance(t, str)]


class NgramIndex:
    """The hashed n-grams of a set of test problems: `test` maps an id to its text (or a list of
    separate text segments, e.g. prompt and gold answer)."""

    def __init__(self, test: dict[str, str | list[str]], n: int = 13, min_n: int = 8, max_freq: int = 10):
        if n < 1 or min_n < 1:
            raise ValueError("n and min_n must be >= 1")
        self.n, self.min_n, self.max_freq = n, min_n, max_freq
        owners: dict[tuple, set[str]] = {}
        self.too_short: list[str] = []  # problems with fewer than min_n words: never matched
        for tid, text in test.items():
            segs = [words(s) for s in _segments(text)]
            grams: set[tuple] = set()
            for i, w in enumerate(segs):
                if len(w) >= n:
                    grams.update(tuple(w[j:j + n]) for j in range(len(w) - n + 1))
                elif i == 0 and len(w) >= min_n:  # a short problem (prompt) is matched whole
                    grams.add(tuple(w))
            if not grams:
                if sum(map(len, segs)) < n:
                    self.too_short.append(str(tid))
                continue
            for g in grams:
                owners.setdefault(g, set()).add(str(tid))
        self.template = {g for g, ids in owners.items() if len(ids) > max_freq}
        self.owners = {g: ids for g, ids in owners.items() if g not in self.template}
        self.counts: dict[str, int] = {}  # counted n-grams per problem (template ones left out)
        for ids in self.owners.values():
            for t in ids:
                self.counts[t] = self.counts.get(t, 0) + 1
        self.lengths = sorted({len(g) for g in self.owners}, reverse=True)  # n, and the short problems' lengths

    def match(self, segments: list[list[str]], min_coverage: float = 0.0) -> list[Hit]:
        """The problems sharing an n-gram with any of `segments` (each a list of normalized words)."""
        if not self.owners:
            return []
        found: dict[str, set[tuple]] = {}
        first: dict[str, tuple] = {}
        for w in segments:
            for L in self.lengths:
                for j in range(len(w) - L + 1):
                    g = tuple(w[j:j + L])
                    ids = self.owners.get(g)
                    if ids is None:
                        continue
                    for t in ids:
                        found.setdefault(t, set()).add(g)
                        first.setdefault(t, g)
        hits = []
        for t, gs in found.items():
            cov = len(gs) / self.counts[t]
            if cov >= min_coverage:
                hits.append(Hit(t, " ".join(first[t]), len(gs), cov))
        return sorted(hits, key=lambda h: (-h.coverage, h.test_id))


def overlap(train_texts: list[str | list[str]], test: dict[str, str | list[str]], n: int = 13, min_n: int = 8,
            max_freq: int = 10, min_coverage: float = 0.0) -> dict[int, list[Hit]]:
    """{index of a training text: the test problems it overlaps (`Hit`: test_id, ngram, shared,
    coverage), most covered first}; a training text (or list of its separate fields) without any is
    left out. See the module docstring for the rules."""
    index = NgramIndex(test, n, min_n, max_freq)
    out = {}
    for i, text in enumerate(train_texts):
        hits = index.match([words(s) for s in _segments(text)], min_coverage)
        if hits:
            out[i] = hits
    return out


def _strip_instruction(text: str) -> str:
    from posttrain.eval.benchmarks import MATH_INSTRUCTION

    return text.replace(MATH_INSTRUCTION, "")


def benchmark_texts(loaded) -> dict[str, list[str]]:
    """Problem id -> [prompt text without the evaluation instruction, gold answer] of a `LoadedBenchmark`."""
    out = {}
    for p in loaded.problems:
        segs = [_strip_instruction(as_text(p.prompt))]
        if isinstance(p.gold, str) and p.gold.strip():
            segs.append(p.gold)
        out[str(p.id)] = segs
    return out


def against_texts(path: str) -> dict[str, list[str]]:
    """Row number -> every text column of each row of a test file."""
    from posttrain.data.sources import read_rows

    return {str(r.row): [as_text(v) for v in r.data.values() if is_text(v)] for r in read_rows(path)}


def _sources(cfg: DataToolsConfig):
    """(name, source description, {id: texts}, skipped rows) of every test set asked for."""
    from posttrain.eval.benchmarks import load_benchmark

    for name in cfg.benchmark:
        try:
            loaded = load_benchmark(name, None, cfg.data.root or None, 0, "skip")
        except (KeyError, ValueError, TypeError) as e:  # unknown name / bad task spec
            raise ConfigError(f"--benchmark {name}: {e}") from None
        yield name, loaded.source, benchmark_texts(loaded), loaded.skipped
    for path in cfg.decontam.against:
        yield path, path, against_texts(path), 0


def _reason(name: str, hits: list[Hit], n: int) -> str:
    h = hits[0]
    words_in = len(h.ngram.split())
    what = f"{n}-gram" if words_in == n else f"whole {words_in}-word problem"
    more = f" (+{len(hits) - 1} more problems)" if len(hits) > 1 else ""
    return f"overlaps {name} problem {h.test_id}: {what} '{h.ngram}'{more}"


def run(cfg: DataToolsConfig) -> dict:
    from posttrain.datatools.stage import check_out, write_outputs
    from posttrain.datatools.table import load_table

    o = cfg.decontam
    if not cfg.benchmark and not o.against:
        raise ConfigError("decontaminate: name the test sets: --benchmark gsm8k,math500 and/or --decontam.against FILE")
    out = check_out(cfg)
    t0 = time.perf_counter()
    table = load_table(cfg.data)
    train = [[words(t) for t in it.texts(o.fields)] for it in table.items]
    reasons: dict[int, str] = {}
    per: dict[str, dict] = {}
    for name, source, test, skipped in _sources(cfg):
        t1 = time.perf_counter()
        index = NgramIndex(test, o.n, o.min_n, o.max_benchmark_freq)
        rows, problems = 0, set()
        for i, segs in enumerate(train):
            hits = index.match(segs, o.min_coverage)
            if not hits:
                continue
            rows += 1
            problems.update(h.test_id for h in hits)
            reasons.setdefault(i, _reason(name, hits, o.n))
        per[name] = {"source": source, "problems": len(test), "skipped_problems": skipped,
                     "too_short_problems": len(index.too_short), "template_ngrams_ignored": len(index.template),
                     "rows_overlapping": rows, "problems_hit": len(problems),
                     "problem_ids_hit": sorted(problems, key=lambda s: (len(s), s))[:50],
                     "seconds": round(time.perf_counter() - t1, 3)}
    kept = [it for i, it in enumerate(table.items) if i not in reasons]
    removed = [(table.items[i], reasons[i]) for i in sorted(reasons)]
    report = {"cmd": "decontaminate", "n": o.n, "min_n": o.min_n, "max_benchmark_freq": o.max_benchmark_freq,
              "min_coverage": o.min_coverage, "fields": list(o.fields) or "every text column", "benchmarks": per,
              "seconds": round(time.perf_counter() - t0, 3)}
    md = ["| test set | problems | rows overlapping | problems hit | too short |", "|---|---|---|---|---|"]
    md += [f"| {k} | {v['problems']} | {v['rows_overlapping']} | {v['problems_hit']} | {v['too_short_problems']} |"
           for k, v in per.items()]
    if removed:
        md += ["", "| row | reason |", "|---|---|"] + [f"| {it.line} | {why} |" for it, why in removed[:20]]
    return write_outputs(out, table, kept, removed, report, md)


# ---------------------------------------------------------------- eval hygiene
def find_run_folder(model: str) -> Path | None:
    """The posttrain run folder a model path lies in: the path itself or one or two levels up
    (``runs/x``, ``runs/x/final``, ``runs/x/checkpoints/step-N``) holding a ``config.yaml``."""
    try:
        p = Path(model).expanduser()
        if not p.exists():
            return None
        p = p.resolve()
    except (OSError, ValueError):
        return None
    for c in (p, p.parent, p.parent.parent):
        if (c / "config.yaml").is_file():
            return c
    return None


def eval_overlap(model: str, loaded, n: int = 13, min_n: int = 8, max_freq: int = 10) -> dict | None:
    """Overlap of the evaluated problems with the training data of the run `model` comes from, or
    None when `model` is not inside a run folder (or its config names no training data). Never
    raises: a run whose data cannot be read gives ``{"train_data": ..., "error": ...}``."""
    from posttrain.logging import warn

    try:
        run_dir = find_run_folder(model)
        if run_dir is None:
            return None
        from posttrain.config import read_yaml

        raw = read_yaml(run_dir / "config.yaml")
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        path = data.get("path")
        if not isinstance(path, str) or not path:
            return None
    except Exception:  # not a readable posttrain run: nothing to check
        return None
    rec: dict = {"train_data": path, "run": str(run_dir), "n": n}
    if path.startswith("python:"):  # rows a trainer got from Python (train_data=...): not stored in the run
        return {**rec, "error": "the training rows were passed from Python and are not stored in the run folder"}
    try:
        from posttrain.datatools.config import DataIn
        from posttrain.datatools.table import load_table

        if not path.startswith("task:") and not Path(path).exists() and (run_dir / path).exists():
            path = str(run_dir / path)  # a path relative to the run folder
        columns = data.get("columns") if isinstance(data.get("columns"), dict) else {}
        limit = data.get("train_rows") if isinstance(data.get("train_rows"), int) else 0
        table = load_table(DataIn(path=path, columns={str(k): str(v) for k, v in columns.items()},
                                  on_error="skip", limit=limit))
        hits = overlap([it.texts() for it in table.items], benchmark_texts(loaded), n, min_n, max_freq)
        ids = sorted({h.test_id for hs in hits.values() for h in hs}, key=lambda s: (len(s), s))
        rec.update(train_rows=len(table.items), overlapping_rows=len(hits), overlapping_problems=len(ids), ids=ids[:20])
        if ids:
            warn(f"eval: {len(ids)} of {len(loaded.problems)} {loaded.benchmark.name} problems share a {n}-word sequence "
                 f"with the training data of run {run_dir} ({path}, {len(hits)} rows); first ids: {ids[:5]}")
    except Exception as e:  # never stops an evaluation
        rec["error"] = f"{type(e).__name__}: {e}"
        warn(f"eval: could not check the overlap with run {run_dir}'s training data {path}: {rec['error']}")
    return rec
