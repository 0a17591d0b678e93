"""Step-level beam search guided by a process reward model (PRM).

Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally can be More Effective than Scaling Model
Parameters", Sec. 5.1 (beam search against a PRM): sample N first steps; score each partial solution
with the PRM; keep the top N/M; expand each kept beam with M next-step samples; repeat until the
solutions finish or a step limit is reached; pick the final answer by PRM score.

Here ``num_beams`` is N/M (beams kept) and ``expansions_per_beam`` is M, so the first step draws
``num_beams * expansions_per_beam`` samples and every later step the same number again.

Departures / choices:
- A step is a completion stopped at ``step_sep`` (the engine keeps the separator). A completion that
  stops without the separator (EOS) is a finished solution; one that hits ``max_step_tokens`` is an
  unfinished step and stays active.
- Finished solutions leave the beam; search stops once ``num_beams`` solutions have finished, no
  beam is active, or after ``max_steps`` steps (then the active beams count as solutions).
- The partial-solution score is ``step_agg`` over the PRM's step scores (default "last", the
  aggregation Snell et al. use for the PRM inside search). The final answer is the best-scored
  finished solution (earliest on ties); Snell et al. also report weighted voting over the
  finished beams, which `weighted_vote`-style callers can do from ``result.candidates``.
- ``dedupe`` (default on) drops an expansion whose whole text repeats one already in the pool, so
  identical samples do not occupy several beams (tokens are still counted).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from posttrain.rollout.base import SamplingParams
from posttrain.search.base import (
    SEARCH_METHODS,
    Candidate,
    Policy,
    PrmScorer,
    SearchResult,
    aggregate_steps,
    default_extract,
    derive_seed,
    split_steps,
)

__all__ = ["prm_beam_search"]


@dataclass
class _Beam:
    ids: list[int]  # generated ids after the prompt
    text: str  # generated text after the prompt
    done: bool = False
    finish_reason: str = "stop"
    score: float = 0.0


def _expand(policy: Policy, prompt_ids, beams, n_each: int, params: SamplingParams, sep: str) -> list[_Beam]:
    groups = policy.generate([prompt_ids + b.ids for b in beams], replace(params, n=n_each))
    out = []
    for beam, group in zip(beams, groups):
        for c in group:
            ended_at_sep = c.finish_reason == "stop" and (c.stop_reason == sep or policy.text_of(c).endswith(sep))
            done = c.finish_reason == "stop" and not ended_at_sep
            out.append(_Beam(beam.ids + list(c.token_ids), beam.text + policy.text_of(c), done, c.finish_reason))
    return out


def _score(scorer: PrmScorer, prompt: str, beams: list[_Beam], sep: str, agg: str) -> None:
    per_step = scorer.score_steps(prompt, [split_steps(b.text, sep) for b in beams])
    for b, s in zip(beams, per_step):
        b.score = aggregate_steps(s, agg)


@SEARCH_METHODS.register("prm_beam_search")
def prm_beam_search(
    policy: Policy,
    prompt: str,
    scorer: PrmScorer | None = None,
    *,
    num_beams: int = 4,
    expansions_per_beam: int = 4,
    max_steps: int = 16,
    max_step_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    step_sep: str = "\n",
    step_agg: str = "last",
    dedupe: bool = True,
    seed: int | None = None,
    extract: Callable[[str], str | None] = default_extract,
) -> SearchResult:
    """PRM-guided step-level beam search (Snell et al. 2024); see the module docstring."""
    if not isinstance(scorer, PrmScorer):
        raise ValueError("prm_beam_search needs a PRM scorer with score_steps()")
    if num_beams < 1 or expansions_per_beam < 1 or max_steps < 1:
        raise ValueError("num_beams, expansions_per_beam and max_steps must be >= 1")
    start = policy.tokens_spent
    prompt_ids = policy.encode_prompt(prompt)
    active, finished = [_Beam([], "")], []
    for depth in range(max_steps):
        params = SamplingParams(
            temperature=temperature, top_p=top_p, max_new_tokens=max_step_tokens, stop=(step_sep,),
            seed=derive_seed(seed, depth),
        )
        n_each = num_beams * expansions_per_beam if depth == 0 else expansions_per_beam
        pool = _expand(policy, prompt_ids, active, n_each, params, step_sep)
        if dedupe:
            seen: set[str] = set()
            pool = [b for b in pool if not (b.text in seen or seen.add(b.text))]
        _score(scorer, prompt, pool, step_sep, step_agg)
        ranked = sorted(range(len(pool)), key=lambda i: (-pool[i].score, i))
        finished += [pool[i] for i in ranked if pool[i].done]
        active = [pool[i] for i in ranked if not pool[i].done][:num_beams]
        if len(finished) >= num_beams or not active:
            break
    solutions = finished if finished else active
    cands = [Candidate(b.text, b.ids, extract(b.text), b.score, b.finish_reason) for b in solutions]
    best = max(range(len(cands)), key=lambda i: (cands[i].score, -i))
    chosen = cands[best]
    return SearchResult(
        answer=chosen.answer,
        score=chosen.score,
        text=chosen.text,
        tokens_spent=policy.tokens_spent - start,
        candidates=cands,
        method="prm_beam_search",
        info={"steps": float(depth + 1), "finished": float(len(finished))},
    )
