"""Parallel sampling methods: best-of-N, self-consistency (majority vote), reward-weighted vote.

- best-of-N: sample N complete solutions, return the one the verifier scores highest (Cobbe et al.
  2021, "Training Verifiers to Solve Math Word Problems"; with a PRM, the solution score is an
  aggregate of step scores, min / last / prod as compared by Lightman et al. 2023 and Snell et al. 2024).
- majority_vote: self-consistency (Wang et al. 2022): the most frequent final answer among N samples.
- weighted_vote: each answer class gets the sum of its members' verifier scores ("weighted
  best-of-N" in Li et al. 2023 / Snell et al. 2024 Sec. 5).

Choices: answer classes and tie-breaking come from `posttrain.eval.metrics.vote` (the first-seen
class wins ties; completions with no extractable answer never win). Ties in best-of-N go to the
earliest sample. The returned text of a vote is the first (or, weighted, the best-scored) member of
the winning class.
"""
from __future__ import annotations

from typing import Callable, Sequence

from posttrain.eval.metrics import Match, canonical_match, vote
from posttrain.rollout.base import SamplingParams
from posttrain.search.base import (
    SEARCH_METHODS,
    Candidate,
    Policy,
    Scorer,
    SearchResult,
    default_extract,
    score_texts,
)

__all__ = ["sample_solutions", "best_of_n", "majority_vote", "weighted_vote", "vote_candidates"]

Extract = Callable[[str], "str | None"]


def sample_solutions(
    policy: Policy,
    prompt: str,
    n: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    seed: int | None = None,
    extract: Extract = default_extract,
) -> list[Candidate]:
    """N complete solutions for `prompt` in one engine call, with their extracted answers."""
    if n < 1:
        raise ValueError(f"need n >= 1 samples, got {n}")
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    (group,) = policy.generate([policy.encode_prompt(prompt)], params)
    out = []
    for c in group:
        text = policy.text_of(c)
        out.append(Candidate(text, list(c.token_ids), extract(text), None, c.finish_reason))
    return out


def vote_candidates(
    candidates: Sequence[Candidate], weights: Sequence[float] | None = None, match: Match = canonical_match
) -> tuple[Candidate | None, float, float]:
    """(representative candidate of the winning class, its weight, its share of the total weight)."""
    result = vote([c.answer for c in candidates], weights, match=match)
    if result.answer is None:
        return None, 0.0, 0.0
    members = next(m for rep, _, m in result.classes if rep == result.answer)
    if weights is None:
        chosen = candidates[members[0]]
    else:
        chosen = candidates[max(members, key=lambda i: (weights[i], -i))]
    total = sum(w for _, w, _ in result.classes)
    return chosen, result.weight, (result.weight / total if total > 0 else 0.0)


def _result(chosen: Candidate | None, score: float | None, cands, spent: int, method: str, **info) -> SearchResult:
    return SearchResult(
        answer=chosen.answer if chosen else None,
        score=score,
        text=chosen.text if chosen else "",
        tokens_spent=spent,
        candidates=list(cands),
        method=method,
        info=dict(info),
    )


@SEARCH_METHODS.register("best_of_n")
def best_of_n(
    policy: Policy,
    prompt: str,
    scorer: Scorer | None = None,
    *,
    n: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    step_sep: str = "\n",
    step_agg: str = "min",
    seed: int | None = None,
    extract: Extract = default_extract,
) -> SearchResult:
    """Sample `n` solutions and return the highest-scored one (ORM score, or PRM steps aggregated)."""
    if scorer is None:
        raise ValueError("best_of_n needs a scorer (an ORM with score() or a PRM with score_steps())")
    start = policy.tokens_spent
    cands = sample_solutions(
        policy, prompt, n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        seed=seed, extract=extract,
    )
    scores = score_texts(scorer, prompt, [c.text for c in cands], step_sep, step_agg)
    for c, s in zip(cands, scores):
        c.score = s
    best = max(range(len(cands)), key=lambda i: (scores[i], -i))
    return _result(cands[best], scores[best], cands, policy.tokens_spent - start, "best_of_n")


@SEARCH_METHODS.register("majority_vote")
def majority_vote(
    policy: Policy,
    prompt: str,
    scorer: Scorer | None = None,
    *,
    n: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    seed: int | None = None,
    extract: Extract = default_extract,
    match: Match = canonical_match,
) -> SearchResult:
    """Self-consistency: the plurality answer of `n` samples; `score` is its vote share. Ignores `scorer`."""
    start = policy.tokens_spent
    cands = sample_solutions(
        policy, prompt, n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        seed=seed, extract=extract,
    )
    chosen, weight, share = vote_candidates(cands, match=match)
    return _result(chosen, share, cands, policy.tokens_spent - start, "majority_vote", votes=weight)


@SEARCH_METHODS.register("weighted_vote")
def weighted_vote(
    policy: Policy,
    prompt: str,
    scorer: Scorer | None = None,
    *,
    n: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    step_sep: str = "\n",
    step_agg: str = "min",
    seed: int | None = None,
    extract: Extract = default_extract,
    match: Match = canonical_match,
) -> SearchResult:
    """Reward-weighted vote: answer classes weighted by the sum of their members' scores.

    Scores should be non-negative (PRM probabilities, or a sigmoid-ed ORM); `score` is the winning
    class's share of the total weight.
    """
    if scorer is None:
        raise ValueError("weighted_vote needs a scorer; use majority_vote for unweighted voting")
    start = policy.tokens_spent
    cands = sample_solutions(
        policy, prompt, n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        seed=seed, extract=extract,
    )
    scores = score_texts(scorer, prompt, [c.text for c in cands], step_sep, step_agg)
    for c, s in zip(cands, scores):
        c.score = s
    chosen, weight, share = vote_candidates(cands, scores, match=match)
    return _result(chosen, share, cands, policy.tokens_spent - start, "weighted_vote", votes=weight)
