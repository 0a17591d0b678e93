"""Sampling-based evaluation metrics: pass@k, maj@k, mean@k, and their aggregation over problems.

- pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained
  on Code", the Codex paper): with n samples of which c are correct,
  ``pass@k = 1 - C(n-c, k) / C(n, k)``, computed in the numerically stable product form
  ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (their Figure 3), never with large binomials.
- maj@k is self-consistency voting (Wang et al. 2022, "Self-Consistency Improves Chain of Thought
  Reasoning"): the most frequent final answer among the first k samples is compared with the gold.
- mean@k is the average correctness of the first k samples (an estimate of pass@1 from k samples).

Choices and departures:
- Voting groups answers into equivalence classes with `match` (default `canonical_match`: equal
  after `canonical_answer`; pass `math_match` to also merge answers math-verify finds equivalent,
  e.g. ``1/2`` and ``0.5``). A new answer joins the first existing class whose representative
  (its first member) matches it, so grouping is order-dependent only when `match` is not transitive.
- Tie-breaking: among classes with equal vote weight, the class whose first member appears first in
  the sample order wins. ``None`` (no extractable answer) never forms a class and never wins; if all
  k answers are None, the vote has no winner and maj@k counts the problem as wrong.
- maj@k is the vote over the *first k* samples (not an average over subsets), as commonly reported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from posttrain.rewards.math import answers_match, normalize_answer

__all__ = [
    "pass_at_k",
    "canonical_answer",
    "canonical_match",
    "math_match",
    "vote",
    "VoteResult",
    "maj_at_k",
    "mean_at_k",
    "Sample",
    "ProblemSamples",
    "EvalMetrics",
    "aggregate_metrics",
]

Match = Callable[[str, str], bool]

_NUM_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k)/C(n, k) (Chen et al. 2021)."""
    if not (0 <= c <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def canonical_answer(answer: str) -> str:
    """Canonical string form for voting: `normalize_answer` (strip, $, \\text, spaces, case,
    trailing period), then ``\\boxed{x}`` -> ``x``, thousands commas dropped, and numbers written
    minimally (``+7.50`` -> ``7.5``, ``7.0`` -> ``7``, ``-0`` -> ``0``)."""
    s = normalize_answer(answer)
    m = re.fullmatch(r"\\boxed\{(.*)\}", s)
    if m:
        s = m.group(1)
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    if _NUM_RE.fullmatch(s):
        sign = "-" if s.startswith("-") else ""
        s = s.lstrip("+-")
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        s = s.lstrip("0") or "0"
        if s.startswith("."):
            s = "0" + s
        s = s if s == "0" else sign + s
    return s


def canonical_match(a: str, b: str) -> bool:
    """Equal after `canonical_answer` (fast, deterministic; the default for voting)."""
    return canonical_answer(a) == canonical_answer(b)


def math_match(a: str, b: str) -> bool:
    """`canonical_match`, falling back to math-verify equivalence (`rewards.math.answers_match`)."""
    return canonical_match(a, b) or answers_match(a, b)


@dataclass(frozen=True)
class VoteResult:
    answer: str | None  # representative (first member) of the winning class; None if no votes
    weight: float  # total weight of the winning class (the count when unweighted)
    classes: list[tuple[str, float, list[int]]]  # (representative, weight, member indices), first-seen order


def vote(
    answers: Sequence[str | None], weights: Sequence[float] | None = None, match: Match = canonical_match
) -> VoteResult:
    """Weighted plurality vote over answer equivalence classes (see module docstring for ties)."""
    if weights is not None and len(weights) != len(answers):
        raise ValueError(f"vote: {len(answers)} answers but {len(weights)} weights")
    reps: list[str] = []
    totals: list[float] = []
    members: list[list[int]] = []
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        w = 1.0 if weights is None else float(weights[i])
        for j, rep in enumerate(reps):
            if match(ans, rep):
                totals[j] += w
                members[j].append(i)
                break
        else:
            reps.append(ans)
            totals.append(w)
            members.append([i])
    classes = list(zip(reps, totals, members))
    if not classes:
        return VoteResult(None, 0.0, [])
    best = max(range(len(classes)), key=lambda j: (totals[j], -j))  # first-seen wins ties
    return VoteResult(reps[best], totals[best], classes)


def maj_at_k(
    answers: Sequence[str | None], gold: str, k: int, match: Match = canonical_match, group: Match | None = None
) -> float:
    """1.0 if the plurality answer of the first k samples matches `gold`, else 0.0.

    `group` decides which predicted answers share a voting class (default: `match`); pass it when
    answers are checked against the gold differently from how they are compared with each other
    (e.g. Countdown: equations are grouped as strings but checked by evaluating them)."""
    if not (1 <= k <= len(answers)):
        raise ValueError(f"maj_at_k: need 1 <= k <= len(answers)={len(answers)}, got k={k}")
    winner = vote(answers[:k], match=group or match).answer
    return 1.0 if winner is not None and match(winner, gold) else 0.0


def mean_at_k(correct: Sequence[bool], k: int) -> float:
    """Average correctness of the first k samples."""
    if not (1 <= k <= len(correct)):
        raise ValueError(f"mean_at_k: need 1 <= k <= len(correct)={len(correct)}, got k={k}")
    return sum(bool(c) for c in correct[:k]) / k


@dataclass(frozen=True)
class Sample:
    answer: str | None  # extracted final answer; None when none could be extracted
    num_tokens: int  # generated tokens
    correct: bool | None = None  # a precomputed verdict (e.g. a reward); None: compare answer with gold


@dataclass
class ProblemSamples:
    gold: str
    samples: list[Sample]  # sampled completions, in sampling order (maj@k / mean@k use the first k)
    greedy: Sample | None = None  # a separate temperature-0 completion, if one was generated


@dataclass
class EvalMetrics:
    num_problems: int
    samples_per_problem: int  # the smallest sample count over problems
    greedy_acc: float | None  # None when some problem has no greedy sample
    pass_at: dict[int, float] = field(default_factory=dict)  # k -> mean pass@k
    maj_at: dict[int, float] = field(default_factory=dict)
    mean_at: dict[int, float] = field(default_factory=dict)
    avg_tokens: float = 0.0  # mean generated tokens per sampled completion
    avg_greedy_tokens: float | None = None

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"pass@4": ..., "maj@4": ..., ...}`` for logging."""
        out: dict[str, float] = {"num_problems": float(self.num_problems), "avg_tokens": self.avg_tokens}
        if self.greedy_acc is not None:
            out["greedy_acc"] = self.greedy_acc
        if self.avg_greedy_tokens is not None:
            out["avg_greedy_tokens"] = self.avg_greedy_tokens
        for name, table in (("pass", self.pass_at), ("maj", self.maj_at), ("mean", self.mean_at)):
            out.update({f"{name}@{k}": v for k, v in sorted(table.items())})
        return out


def _is_correct(sample: Sample, gold: str, match: Match) -> bool:
    if sample.correct is not None:
        return sample.correct
    return sample.answer is not None and match(sample.answer, gold)


def aggregate_metrics(
    problems: Sequence[ProblemSamples], ks: Sequence[int] = (1,), match: Match = canonical_match,
    group: Match | None = None,
) -> EvalMetrics:
    """Mean greedy accuracy, pass@k, maj@k, mean@k (for each k in `ks`) and average tokens.

    Every problem must have at least max(ks) samples (pass@k is undefined for k > n).
    """
    if not problems:
        raise ValueError("aggregate_metrics: no problems")
    n_min = min(len(p.samples) for p in problems)
    if not ks or max(ks) > n_min or min(ks) < 1:
        raise ValueError(f"aggregate_metrics: every k must be in [1, {n_min}] (fewest samples), got {list(ks)}")
    pass_at = {k: 0.0 for k in ks}
    maj_at = {k: 0.0 for k in ks}
    mean_at = {k: 0.0 for k in ks}
    tokens, count = 0, 0
    for p in problems:
        correct = [_is_correct(s, p.gold, match) for s in p.samples]
        answers = [s.answer for s in p.samples]
        tokens += sum(s.num_tokens for s in p.samples)
        count += len(p.samples)
        for k in ks:
            pass_at[k] += pass_at_k(len(correct), sum(correct), k)
            maj_at[k] += maj_at_k(answers, p.gold, k, match=match, group=group)
            mean_at[k] += mean_at_k(correct, k)
    m = len(problems)
    has_greedy = all(p.greedy is not None for p in problems)
    greedy_acc = sum(_is_correct(p.greedy, p.gold, match) for p in problems) / m if has_greedy else None
    greedy_tok = sum(p.greedy.num_tokens for p in problems) / m if has_greedy else None
    return EvalMetrics(
        num_problems=m,
        samples_per_problem=n_min,
        greedy_acc=greedy_acc,
        pass_at={k: v / m for k, v in pass_at.items()},
        maj_at={k: v / m for k, v in maj_at.items()},
        mean_at={k: v / m for k, v in mean_at.items()},
        avg_tokens=tokens / max(count, 1),
        avg_greedy_tokens=greedy_tok,
    )
