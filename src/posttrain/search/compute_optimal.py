"""Compute-optimal test-time scaling: choose the search method per question from the token budget
and an estimate of the question's difficulty (Snell et al. 2024, "Scaling LLM Test-Time Compute
Optimally can be More Effective than Scaling Model Parameters", Sec. 3 and 5).

Snell et al. bin questions by difficulty and find that (i) on easy questions parallel sampling
(best-of-N / weighted voting) is as good as or better than PRM search, which tends to over-optimize
the verifier; (ii) on medium and hard questions PRM beam search wins at low budgets, and best-of-N
catches up on medium questions at high budgets. They estimate difficulty from verifier scores of
samples; we use the cheaper *agreement* of a few probe samples instead.

The rule, in order:
1. Draw ``probe_samples`` complete samples; ``agreement`` = share of them in the plurality answer
   class (no-answer samples count in the denominator); ``avg_len`` = their mean generated length.
2. ``affordable`` = (token_budget - probe tokens) // avg_len: further complete samples the budget buys.
3. If the probes agree unanimously, or nothing more is affordable: vote over the probes and stop.
4. easy (agreement >= ``easy_agreement``): vote over probes + ``affordable`` new samples,
   reward-weighted when there is a scorer, else plain majority.
5. medium (``hard_agreement`` <= agreement < ``easy_agreement``) with a PRM: beam search if
   ``affordable < high_budget_samples``, else weighted vote over probes + new samples.
6. hard (agreement < ``hard_agreement``) with a PRM: beam search.
7. medium / hard without a PRM: weighted vote with an ORM, else majority vote.
Beam search gets ``num_beams = max(1, affordable // expansions_per_beam)`` beams: each of the
``num_beams * expansions_per_beam`` chains costs about one solution's length over all its steps.

Departures: difficulty is agreement-based, not verifier-binned (no held-out difficulty bins); the
budget is planned from the probes' mean length, not enforced token-exactly; sequential revisions
(Snell et al.'s other axis) are not included.
"""
from __future__ import annotations

from typing import Callable

from posttrain.eval.metrics import Match, canonical_match
from posttrain.search.base import (
    SEARCH_METHODS,
    Candidate,
    Policy,
    PrmScorer,
    Scorer,
    SearchResult,
    default_extract,
    derive_seed,
    score_texts,
)
from posttrain.search.beam import prm_beam_search
from posttrain.search.sampling import sample_solutions, vote_candidates

__all__ = ["compute_optimal", "classify_difficulty"]


def classify_difficulty(agreement: float, easy_agreement: float = 0.75, hard_agreement: float = 0.5) -> str:
    """'easy' / 'medium' / 'hard' from the probes' plurality share."""
    if agreement >= easy_agreement:
        return "easy"
    return "medium" if agreement >= hard_agreement else "hard"


def _vote(policy, prompt, scorer, cands: list[Candidate], start, step_sep, step_agg, match, info) -> SearchResult:
    weights = None
    if scorer is not None:
        weights = score_texts(scorer, prompt, [c.text for c in cands], step_sep, step_agg)
        for c, w in zip(cands, weights):
            c.score = w
    chosen, _, share = vote_candidates(cands, weights, match=match)
    info = {**info, "chosen": "weighted_vote" if scorer is not None else "majority_vote"}
    return SearchResult(
        answer=chosen.answer if chosen else None,
        score=share,
        text=chosen.text if chosen else "",
        tokens_spent=policy.tokens_spent - start,
        candidates=cands,
        method="compute_optimal",
        info=info,
    )


@SEARCH_METHODS.register("compute_optimal")
def compute_optimal(
    policy: Policy,
    prompt: str,
    scorer: Scorer | None = None,
    *,
    token_budget: int = 8192,
    probe_samples: int = 4,
    easy_agreement: float = 0.75,
    hard_agreement: float = 0.5,
    high_budget_samples: int = 32,
    expansions_per_beam: int = 4,
    max_new_tokens: int = 512,
    max_steps: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    step_sep: str = "\n",
    step_agg: str = "min",
    seed: int | None = None,
    extract: Callable[[str], str | None] = default_extract,
    match: Match = canonical_match,
) -> SearchResult:
    """Pick majority / weighted vote or PRM beam search per question; see the module docstring."""
    start = policy.tokens_spent
    sample_kw = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, extract=extract)
    probes = sample_solutions(policy, prompt, probe_samples, seed=derive_seed(seed, 0), **sample_kw)
    _, votes, _ = vote_candidates(probes, match=match)
    agreement = votes / len(probes)
    avg_len = max(1.0, (policy.tokens_spent - start) / len(probes))
    affordable = int(max(0, token_budget - (policy.tokens_spent - start)) // avg_len)
    difficulty = classify_difficulty(agreement, easy_agreement, hard_agreement)
    info: dict[str, float | str] = {"difficulty": difficulty, "agreement": agreement, "affordable_samples": float(affordable)}
    vote_args = (step_sep, step_agg, match)
    if agreement == 1.0 or affordable < 1:
        return _vote(policy, prompt, scorer, probes, start, *vote_args, info)
    use_beam = isinstance(scorer, PrmScorer) and (
        difficulty == "hard" or (difficulty == "medium" and affordable < high_budget_samples)
    )
    if not use_beam:
        extra = sample_solutions(policy, prompt, affordable, seed=derive_seed(seed, 1), **sample_kw)
        return _vote(policy, prompt, scorer, probes + extra, start, *vote_args, info)
    sub = prm_beam_search(
        policy, prompt, scorer, num_beams=max(1, affordable // expansions_per_beam),
        expansions_per_beam=expansions_per_beam, max_steps=max_steps, max_step_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, step_sep=step_sep, step_agg="last",
        seed=derive_seed(seed, 2), extract=extract,
    )
    sub.tokens_spent = policy.tokens_spent - start
    sub.method = "compute_optimal"
    sub.info = {**info, **sub.info, "chosen": "prm_beam_search"}
    return sub
