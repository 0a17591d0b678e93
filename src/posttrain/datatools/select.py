"""`posttrain data select`: a small, strong training subset: s1-style (SFT) or LIMR (RL) selection.

    posttrain data select --data runs/pr/data.jsonl --select.n 1000 --select.diversity_column type --out runs/s1
    posttrain data select --data train.jsonl --select.method limr --select.history runs/rl/prompt_rewards.jsonl --out runs/limr

Both write the selected rows in their input order with a new column ``select_rank`` (1: chosen
first), and every other row to ``removed.jsonl`` with the step that removed it.

**s1** (``--select.method s1``): the three-stage selection of Muennighoff et al. 2025, "s1: Simple
test-time scaling" (59K -> 1K problems by quality, difficulty and diversity), with the emphasis of
LIMO (Ye et al. 2025, "LIMO: Less is More for Reasoning": hard problems, long worked solutions).

1. Quality: a row whose ``--select.correct_column`` (default ``correct``) is false is dropped (true,
   1, "true" / "yes" / "1" count as true; false, 0, "false" / "no" / "0" as false; a missing or null
   value is not judged; a column no row has is not applied). With ``--select.checker``
   (math|exact|numeric|task:SPEC, the eval checkers of `posttrain.eval.benchmarks.get_checker`) the
   row's completion (completion or chosen) must also reach its ``answer``.
2. Difficulty (the ``pass_rate`` column of `posttrain data passrate`): a row with pass_rate above
   ``--select.max_pass_rate`` is dropped; a row with pass_rate 0 (never solved) comes after every
   other row (``--select.unsolved last``) or is dropped (``drop``). A row without a pass rate (no
   column, or null) has *unknown difficulty*: it is kept, and ordered after the rows whose pass rate
   is known and above 0 but before the never-solved ones (when no row has a pass rate, every row is
   unknown and the order is diversity, then length).
3. Diversity and order: the rows are grouped by ``--select.diversity_column`` (s1: the MSC domain;
   MATH: ``type``; a missing value is the group ``(none)``), or, without it, by clustering: in input
   order each row joins the most similar earlier cluster whose first row's word set (of the prompt,
   else the completion; `posttrain.datatools.table.words`) has Jaccard similarity >=
   ``--select.cluster_threshold`` with its own, else starts a cluster (exact Jaccard; candidate
   clusters found by prefix filtering). Within a group rows are ranked hardest first (lowest pass
   rate), then longest completion (s1's preference for long reasoning traces), then input order. The
   selection then goes round-robin: round r takes the r-th ranked row of every group still holding
   one, those rows ordered by the same ranking (ties: a ``--seed``-shuffled group order). The three
   difficulty tiers (solved sometimes, unknown, never solved) are taken one after the other, each
   round-robin. The first ``--select.n`` rows (0: all) are selected.

Departures from s1 / LIMO:
- s1 keeps only problems that *both* Qwen2.5-7B and -32B get wrong, and judges difficulty also by
  the length of the reasoning trace; here difficulty is one model's pass rate with a threshold, and
  never-solved rows go last (or are dropped) since a pass rate of 0 from k samples also catches
  problems with a wrong reference answer;
- s1 samples a domain uniformly at random and then a problem with probability favouring longer
  traces (weight 2^-rank); here the round-robin is deterministic, so a selection is reproducible
  and a smaller n is a prefix of a larger one (``--seed`` only breaks exact ties between groups);
- s1's domains come from an LLM classifying each problem into the Mathematics Subject
  Classification; here from a column, or word-set clusters;
- s1's quality stage removes API errors and badly formatted problems (ASCII art, missing images);
  here quality is the correct column and the optional answer check; LIMO's scoring of reasoning
  chains (self-verification, elaboration) is not done.

**LIMR** (``--select.method limr``): Li et al. 2025, "LIMR: Less is More for RL Scaling". An RL run
on the whole data (`posttrain rl`, which writes ``RUN/prompt_rewards.jsonl``: one line per sampled
group, ``{"step", "prompt_id", "reward_mean", ...}``) gives each prompt i a reward trajectory r_ik
over points k (each step, or ``--select.limr_bins`` equal step ranges, LIMR's epochs: a prompt's
rewards in one range are averaged) and the run its average trajectory r_avg_k (the mean over the
prompts sampled at point k). The learning-impact score (LIMR's Learning Impact Measurement)

    s_i = 1 - sum_k (r_ik - r_avg_k)^2 / sum_k (1 - r_avg_k)^2

is 1 for a prompt whose rewards follow the run's learning curve exactly and falls as it departs from
it (a prompt solved from the start, or never, scores low); the denominator is the distance of a
perfect-reward trajectory from the average, so scores are comparable across runs. Prompts scoring at
least ``--select.limr_threshold`` (LIMR's 0.6) are kept, the highest first, at most ``--select.n``;
the score is written to a new column ``limr_score`` (on removed rows too). A history prompt_id names
a row by ``--select.id_column``'s value (compared as text) or, without it, by its 0-based position
among the rows read; when the history's ``where`` (the run's "FILE: line N") disagrees with the
positions (the RL run skipped empty or too-long prompts, which shifts its ids), rows are matched by
the line numbers the run recorded instead, and the report says so. A row with no history is removed
with the reason "no reward history". `limr_scores` is the score alone, for other callers.

Departures from LIMR:
- LIMR's r_ik is a sample's mean reward in epoch k of a run that visits every sample once per
  epoch; an RL run here samples ``prompts_per_step`` prompts a step, so a prompt has values only
  at the points it was sampled, and both sums of its score run over those points (with one point,
  the score compares that single reward to the run's mean there);
- groups that the reward-band gate refused (``admitted`` false) count: they are the policy's
  rewards at that step all the same;
- the formula takes 1 as the best reward (LIMR's 0/1 accuracy); a point where every prompt has
  reward 1 adds nothing to the denominator, and a prompt whose denominator is 0 scores 0 (the run
  already solved it at every point it was sampled: nothing to learn).
"""
from __future__ import annotations

import json
import math
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from posttrain.config import ConfigError
from posttrain.datatools.config import DataToolsConfig
from posttrain.datatools.stage import check_out, write_outputs
from posttrain.datatools.table import Item, Table, as_text, load_table, words

PASS_RATE = "pass_rate"
HISTORY_FIELDS = ("step", "prompt_id", "reward_mean")
NONE_GROUP = "(none)"


# ---------------------------------------------------------------- LIMR
def check_record(rec: Any, where: str) -> tuple[int, Any, float]:
    """(step, prompt_id, reward_mean) of one history record; a bad one is a DataError starting with `where`."""
    from posttrain.data.sources import DataError

    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object with {', '.join(HISTORY_FIELDS)}")
    missing = [f for f in HISTORY_FIELDS if f not in rec or rec[f] is None]
    if missing:
        raise DataError(f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                        f"(a reward-history line has {', '.join(HISTORY_FIELDS)}: RUN/prompt_rewards.jsonl of `posttrain rl`)")
    step, pid, r = rec["step"], rec["prompt_id"], rec["reward_mean"]
    if isinstance(step, bool) or not isinstance(step, int):
        raise DataError(f"{where}: field 'step': expected an integer, got {step!r}")
    if isinstance(pid, bool) or not isinstance(pid, (int, str)) or (isinstance(pid, str) and not pid.strip()):
        raise DataError(f"{where}: field 'prompt_id': expected an integer or a non-empty string, got {pid!r}")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
        raise DataError(f"{where}: field 'reward_mean': expected a finite number, got {r!r}")
    return step, pid, float(r)


def read_history(path: str | Path) -> list[dict]:
    """The records of a reward-history jsonl, each checked; a bad line is a DataError naming file and line."""
    from posttrain.data.sources import DataError
    from posttrain.datatools.table import read_jsonl_dicts

    p = Path(path)
    out = read_jsonl_dicts(p, "select.history", check=check_record)
    if not out:
        raise DataError(f"{p}: no reward-history records (is it the prompt_rewards.jsonl of an RL run?)")
    return out


def limr_trajectories(history_rows: Iterable[dict], bins: int = 0) -> tuple[list[int], dict[Any, dict[int, float]], dict[int, float]]:
    """(points, prompt_id -> {point: mean reward there}, point -> the run's mean over the prompts there).

    Points are the distinct steps (bins 0) or bin numbers 0..bins-1 of equal step ranges."""
    recs = [check_record(r, f"history record {i}") for i, r in enumerate(history_rows)]
    if not recs:
        return [], {}, {}
    lo, hi = min(s for s, _, _ in recs), max(s for s, _, _ in recs)
    span = hi - lo + 1

    def point(step: int) -> int:
        return step if bins <= 0 else min(bins - 1, (step - lo) * bins // span)

    sums: dict[Any, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for step, pid, r in recs:
        sums[pid][point(step)].append(r)
    traj = {pid: {k: sum(v) / len(v) for k, v in pts.items()} for pid, pts in sums.items()}
    at: dict[int, list[float]] = defaultdict(list)
    for pts in traj.values():
        for k, r in pts.items():
            at[k].append(r)
    avg = {k: sum(v) / len(v) for k, v in at.items()}
    return sorted(avg), traj, avg


def limr_scores(history_rows: Iterable[dict], bins: int = 0) -> dict[Any, float]:
    """prompt_id -> LIMR learning-impact score s_i = 1 - sum_k (r_ik - r_avg_k)^2 / sum_k (1 - r_avg_k)^2
    (sums over the points where the prompt was sampled; 0 when the denominator is 0). `history_rows`:
    dicts with step, prompt_id, reward_mean (RUN/prompt_rewards.jsonl)."""
    _, traj, avg = limr_trajectories(history_rows, bins)
    out = {}
    for pid, pts in traj.items():
        num = sum((r - avg[k]) ** 2 for k, r in pts.items())
        den = sum((1.0 - avg[k]) ** 2 for k in pts)
        out[pid] = 1.0 - num / den if den > 0 else 0.0
    return out


_WHERE_ROW = re.compile(r"(?:line|row) (\d+)$")


def _map_history(cfg: DataToolsConfig, table: Table, history: list[dict], scores: dict) -> tuple[dict[int, float], list, str]:
    """item.index -> score, the prompt ids matching no row, and how ids were matched."""
    from posttrain.data.sources import DataError

    col = cfg.select.id_column
    if col:
        by_key: dict[str, Item] = {}
        for it in table.items:
            if col not in it.view or it.view[col] is None:
                raise DataError(f"{it.row.where(col)}: missing (--select.id_column names the history's prompt_id)")
            key = str(it.view[col])
            if key in by_key:
                raise DataError(f"{it.row.where(col)}: value {it.view[col]!r} also on row {by_key[key].line} "
                                "(--select.id_column must identify one row)")
            by_key[key] = it
        found = {pid: by_key.get(str(pid)) for pid in scores}
        how = f"id_column {col}"
    else:
        items = table.items
        found = {pid: items[pid] if isinstance(pid, int) and 0 <= pid < len(items) else None for pid in scores}
        how = "position"
        recorded: dict[Any, int] = {}
        for rec in history:
            m = _WHERE_ROW.search(str(rec.get("where") or ""))
            if m:
                recorded[rec["prompt_id"]] = int(m.group(1))
        if recorded and any(found.get(pid) is None or found[pid].line != n for pid, n in recorded.items()):
            by_line = {it.line: it for it in items}
            found = {pid: by_line.get(recorded[pid]) if pid in recorded else None for pid in scores}
            how = "recorded lines (the history's 'where'; its prompt ids are not positions in --data)"
    mapped = {it.index: scores[pid] for pid, it in found.items() if it is not None}
    unmatched = sorted((pid for pid, it in found.items() if it is None), key=str)
    if scores and not mapped:
        raise DataError(f"select.history {cfg.select.history}: none of its {len(scores)} prompt ids names a row of "
                        f"{table.source} (matched by {how}; first ids: {unmatched[:5]}); is it the run on this data?")
    return mapped, unmatched, how


def run_limr(cfg: DataToolsConfig, table: Table) -> tuple[list[Item], list[tuple[Item, str]], dict, list[str]]:
    o = cfg.select
    if not o.history:
        raise ConfigError("select.method limr needs --select.history RUN/prompt_rewards.jsonl (from `posttrain rl`)")
    history = read_history(o.history)
    scores = limr_scores(history, o.limr_bins)
    mapped, unmatched, how = _map_history(cfg, table, history, scores)
    removed, passing = [], []
    for it in table.items:
        if it.index not in mapped:
            removed.append((it, "no reward history"))
            continue
        s = mapped[it.index]
        it.added["limr_score"] = s
        if s >= o.limr_threshold:
            passing.append(it)
        else:
            removed.append((it, f"limr_score {s:.4f} < limr_threshold {o.limr_threshold}"))
    passing.sort(key=lambda it: (-mapped[it.index], it.index))
    chosen = passing[: o.n] if o.n else passing
    for it in passing[len(chosen):]:
        removed.append((it, f"limr: beyond the n={o.n} best (limr_score {mapped[it.index]:.4f})"))
    for rank, it in enumerate(chosen, start=1):
        it.added["select_rank"] = rank
    points, _, _ = limr_trajectories(history, o.limr_bins)
    vals = list(mapped.values())
    report = {"history": str(o.history), "history_records": len(history), "history_prompts": len(scores),
              "points": len(points), "limr_bins": o.limr_bins, "limr_threshold": o.limr_threshold, "n": o.n,
              "matched_by": how, "unmatched_prompt_ids": len(unmatched), "first_unmatched": unmatched[:5],
              "no_history": sum(1 for _, w in removed if w == "no reward history"),
              "below_threshold": sum(1 for _, w in removed if w.startswith("limr_score")),
              "score_mean": sum(vals) / len(vals) if vals else None, "score_min": min(vals, default=None),
              "score_max": max(vals, default=None)}
    md = [f"- history: {o.history} ({len(history)} records, {len(scores)} prompts, {len(points)} points"
          f"{f' in {o.limr_bins} bins' if o.limr_bins else ' (steps)'}), matched by {how}",
          f"- learning-impact score: mean {report['score_mean'] if vals else float('nan'):.3f}, "
          f"kept at >= {o.limr_threshold}: {len(passing)}, selected {len(chosen)}",
          f"- rows with no reward history: {report['no_history']}; history prompts matching no row: {len(unmatched)}"]
    return chosen, removed, report, md


# ---------------------------------------------------------------- s1
def _truth(v: Any) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return v.strip().lower() in ("true", "yes", "1")
    raise ValueError(v)


def jaccard_clusters(sets: list[set[str]], threshold: float) -> list[int]:
    """Leader clustering: in order, each set joins the earlier cluster whose first set is most similar
    (Jaccard >= threshold; ties: the earliest cluster), else starts one. Exact; the candidate leaders
    come from prefix filtering (a pair at Jaccard >= t shares a word among the first
    |A| - ceil(t|A|) + 1 words of each set, rarest first)."""
    df = Counter(w for s in sets for w in s)
    index: dict[str, list[int]] = defaultdict(list)
    leaders: list[set[str]] = []
    out = []
    for s in sets:
        toks = sorted(s, key=lambda w: (df[w], w))
        prefix = toks[: len(toks) - math.ceil(threshold * len(toks) - 1e-9) + 1] if toks else []
        best, best_j = None, -1.0
        for c in sorted({c for w in prefix for c in index[w]}):
            inter = len(s & leaders[c])
            union = len(s) + len(leaders[c]) - inter
            j = inter / union
            if inter >= threshold * union - 1e-9 and j > best_j:
                best, best_j = c, j
        if best is None:
            best = len(leaders)
            leaders.append(set(s))
            for w in prefix:
                index[w].append(best)
        out.append(best)
    return out


def _completion(it: Item) -> str:
    ex = it.ex
    for v in (ex.completion, ex.chosen):
        if v:
            return as_text(v)
    v = it.view.get("completion")
    return as_text(v) if v else ""


def _s1_quality(cfg: DataToolsConfig, table: Table, fail) -> dict[int, str]:
    o = cfg.select
    reasons: dict[int, str] = {}
    col = o.correct_column
    if col and any(col in it.view for it in table.items):
        for it in table.items:
            try:
                ok = _truth(it.view.get(col))
            except ValueError:
                fail(it, f"{it.row.where(col)}: expected true or false (--select.correct_column), got {it.view[col]!r}")
                continue
            if ok is False:
                reasons[it.index] = f"quality: {col} is false"
    if o.checker:
        if o.checker == "code":
            raise ConfigError("select.checker code is not supported here (it runs tests); use math|exact|numeric|task:SPEC")
        from posttrain.eval.benchmarks import get_checker

        extract, match = get_checker(o.checker)
        for it in table.items:
            if it.index in reasons or it.index in fail.bad:
                continue
            text = _completion(it)
            gold = it.ex.answer if it.ex.answer is not None else it.view.get("answer")
            if not text:
                fail(it, f"{it.row.where('completion')}: missing (--select.checker {o.checker} checks the completion)")
                continue
            if gold is None or (isinstance(gold, str) and not gold.strip()):
                fail(it, f"{it.row.where('answer')}: missing (--select.checker {o.checker} compares the completion to it)")
                continue
            pred = extract(text)
            if pred is None:
                reasons[it.index] = f"quality: checker {o.checker}: no final answer in the completion (answer {str(gold)!r})"
            elif not match(pred, str(gold)):
                reasons[it.index] = f"quality: checker {o.checker}: completion's answer {pred!r} != answer {str(gold)!r}"
    return reasons


def run_s1(cfg: DataToolsConfig, table: Table, fail) -> tuple[list[Item], list[tuple[Item, str]], dict, list[str]]:
    from posttrain.datatools.filters import as_number

    o = cfg.select
    reasons = _s1_quality(cfg, table, fail)
    n_quality = len(reasons)
    rate: dict[int, float | None] = {}
    has_rate = any(PASS_RATE in it.view for it in table.items)
    for it in table.items:
        if it.index in reasons or it.index in fail.bad:
            continue
        v = it.view.get(PASS_RATE)
        p = as_number(v)
        if v is not None and p is None:
            fail(it, f"{it.row.where(PASS_RATE)}: expected a number or null, got {v!r}")
            continue
        if p is not None and p > o.max_pass_rate:
            reasons[it.index] = f"difficulty: pass_rate {p:g} > max_pass_rate {o.max_pass_rate:g}"
        elif p == 0 and o.unsolved == "drop":
            reasons[it.index] = "difficulty: pass_rate 0 (never solved; --select.unsolved drop)"
        else:
            rate[it.index] = p
    n_difficulty = len(reasons) - n_quality
    pool = [it for it in table.items if it.index in rate]
    if o.diversity_column:
        def gname(v):
            return NONE_GROUP if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)

        group = {it.index: gname(it.view.get(o.diversity_column)) for it in pool}
        how = f"column {o.diversity_column}"
    else:
        ids = jaccard_clusters([set(words(it.prompt_text() or it.completion_text())) for it in pool], o.cluster_threshold)
        group = {it.index: f"cluster {c + 1}" for it, c in zip(pool, ids)}
        how = f"word-set clusters (jaccard >= {o.cluster_threshold})"
    length = {it.index: len(_completion(it) or it.completion_text()) for it in pool}
    names = sorted(set(group.values()))
    random.Random(cfg.seed).shuffle(names)
    grank = {g: i for i, g in enumerate(names)}

    def tier(i: int) -> int:
        p = rate[i]
        return 1 if p is None else 2 if p == 0 else 0

    def key(it: Item):
        p = rate[it.index]
        return (p if p is not None else 0.0, -length[it.index], it.index)

    order: list[Item] = []
    for t in (0, 1, 2):
        members: dict[str, list[Item]] = defaultdict(list)
        for it in pool:
            if tier(it.index) == t:
                members[group[it.index]].append(it)
        for g in members:
            members[g].sort(key=key)
        depth = max((len(v) for v in members.values()), default=0)
        for r in range(depth):
            rnd = [v[r] for v in members.values() if len(v) > r]
            order += sorted(rnd, key=lambda it: (key(it)[:2], grank[group[it.index]]))
    chosen = order[: o.n] if o.n else order
    pos = {it.index: k for k, it in enumerate(order)}
    for it in order[len(chosen):]:
        reasons[it.index] = f"diversity: not among the n={o.n} selected ({group[it.index]}, place {pos[it.index] + 1})"
    for rank, it in enumerate(chosen, start=1):
        it.added["select_rank"] = rank
    removed = [(it, reasons[it.index]) for it in table.items if it.index in reasons and it.index not in fail.bad]
    sizes = Counter(group[it.index] for it in pool)
    picked = Counter(group[it.index] for it in chosen)
    tiers = Counter(("solved_sometimes", "unknown", "never_solved")[tier(it.index)] for it in chosen)
    report = {"n": o.n, "correct_column": o.correct_column, "checker": o.checker, "max_pass_rate": o.max_pass_rate,
              "unsolved": o.unsolved, "pass_rate_column": has_rate, "groups_by": how, "groups": len(sizes),
              "removed_quality": n_quality, "removed_difficulty": n_difficulty,
              "removed_diversity": len(order) - len(chosen), "selected_tiers": dict(tiers),
              "selected_per_group": dict(picked.most_common(50))}
    md = [f"- quality: removed {n_quality}" + (f" (checker {o.checker})" if o.checker else ""),
          f"- difficulty: removed {n_difficulty} (pass_rate > {o.max_pass_rate}"
          + ("; never solved dropped)" if o.unsolved == "drop" else ")")
          + ("" if has_rate else "; no pass_rate column: difficulty unknown for every row"),
          f"- diversity: {len(sizes)} groups by {how}; selected {len(chosen)} of {len(order)}", "",
          "| group | rows | selected |", "|---|---|---|"]
    md += [f"| {g} | {sizes[g]} | {picked.get(g, 0)} |" for g, _ in sizes.most_common(30)]
    return chosen, removed, report, md


# ---------------------------------------------------------------- the command
class _Fail:
    """A bad row: a DataError (on_error raise), or counted as skipped and left out of both files."""

    def __init__(self, table: Table, on_error: str):
        self.table, self.on_error, self.bad = table, on_error, set()

    def __call__(self, it: Item, msg: str) -> None:
        from posttrain.data.sources import DataError

        if self.on_error == "raise":
            raise DataError(msg)
        self.bad.add(it.index)
        self.table.skipped += 1
        if len(self.table.first_errors) < 5:
            self.table.first_errors.append(msg)


def run(cfg: DataToolsConfig) -> dict:
    o = cfg.select
    if o.method == "limr" and not o.history:
        raise ConfigError("select.method limr needs --select.history RUN/prompt_rewards.jsonl (from `posttrain rl`)")
    out = check_out(cfg)
    t0 = time.perf_counter()
    table = load_table(cfg.data)
    fail = _Fail(table, cfg.data.on_error)
    if o.method == "limr":
        chosen, removed, report, md = run_limr(cfg, table)
    else:
        chosen, removed, report, md = run_s1(cfg, table, fail)
    if fail.bad:
        table.items = [it for it in table.items if it.index not in fail.bad]
    kept = sorted(chosen, key=lambda it: it.index)
    removed = sorted(removed, key=lambda r: r[0].index)
    report = {"cmd": "select", "method": o.method, **report, "seconds": round(time.perf_counter() - t0, 3)}
    return write_outputs(out, table, kept, removed, report, md)
