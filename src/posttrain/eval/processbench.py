"""ProcessBench (Zheng et al. 2024, "ProcessBench: Identifying Process Errors in Mathematical Reasoning").

Each sample is a problem, a list of solution steps and `label`, the index of the first wrong step
(-1 when every step is right). A critic predicts that index; the score per split is the harmonic
mean (F1) of the accuracy on erroneous samples (exact index) and on correct samples (predicting -1).

A PRM predicts the first step whose probability falls below `threshold` (0.5, as in the paper's PRM
evaluation), -1 when none does. Any constant prediction scores F1 = 0 (always -1 gets every
erroneous sample wrong; always a step index gets every correct sample wrong), which is the trivial
baseline; `baseline_f1` also reports the best "always step j" predictor's F1 for reference (0 too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from posttrain.data.sources import DataError, read_rows

__all__ = ["load_processbench", "first_error", "processbench_f1", "evaluate_processbench"]


def load_processbench(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {problem, steps, label}; a malformed row is a DataError naming the file, row and field."""
    rows = read_rows(path)
    if limit > 0:
        rows = rows[:limit]
    out = []
    for r in rows:
        d = r.data
        if not isinstance(d.get("problem"), str) or not d["problem"].strip():
            raise DataError(f"{r.where('problem')}: expected a non-empty problem string")
        steps = d.get("steps")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise DataError(f"{r.where('steps')}: expected a non-empty list of step strings")
        label = d.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
            raise DataError(f"{r.where('label')}: expected -1 or a step index below {len(steps)}, got {label!r}")
        out.append({"problem": d["problem"], "steps": steps, "label": label})
    return out


def first_error(step_probs: Sequence[float], threshold: float = 0.5) -> int:
    """Index of the first step scored below `threshold`, or -1."""
    return next((i for i, p in enumerate(step_probs) if p < threshold), -1)


def processbench_f1(preds: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy on erroneous samples, on correct samples, and their harmonic mean (F1)."""
    if len(preds) != len(labels) or not labels:
        raise ValueError(f"processbench_f1: {len(preds)} predictions for {len(labels)} labels")
    err = [p == y for p, y in zip(preds, labels) if y != -1]
    ok = [p == -1 for p, y in zip(preds, labels) if y == -1]
    acc_err = sum(err) / len(err) if err else 0.0
    acc_ok = sum(ok) / len(ok) if ok else 0.0
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok > 0 else 0.0
    return {"error_acc": acc_err, "correct_acc": acc_ok, "f1": f1, "n_error": float(len(err)), "n_correct": float(len(ok))}


def baseline_f1(labels: Sequence[int]) -> float:
    """Best F1 of a constant predictor (always -1, or always step j): 0 unless a split lacks a class."""
    cands = {-1} | set(labels)
    return max(processbench_f1([c] * len(labels), labels)["f1"] for c in cands)


def evaluate_processbench(scorer, path: str | Path, threshold: float = 0.5, limit: int = 0) -> dict[str, float]:
    """F1 of a `PrmScorer` (``score_steps(prompt, steps_list)``) on one ProcessBench split file."""
    rows = load_processbench(path, limit)
    preds = [first_error(scorer.score_steps(r["problem"], [r["steps"]])[0], threshold) for r in rows]
    labels = [r["label"] for r in rows]
    return {**processbench_f1(preds, labels), "baseline_f1": baseline_f1(labels), "threshold": threshold}
