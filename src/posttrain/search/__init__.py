"""Test-time scaling over the rollout protocol: best-of-N, voting, PRM beam search, MCTS, budget
forcing and compute-optimal method selection. Every method is registered in `SEARCH_METHODS` with
the call signature ``method(policy, prompt, scorer=None, **options) -> SearchResult``."""
from posttrain.search.base import (
    SEARCH_METHODS,
    Candidate,
    OrmScorer,
    Policy,
    PrmScorer,
    SearchResult,
    Tokenizer,
    aggregate_steps,
    split_steps,
)
from posttrain.search.beam import prm_beam_search
from posttrain.search.budget import budget_forcing
from posttrain.search.compute_optimal import classify_difficulty, compute_optimal
from posttrain.search.mcts import mcts
from posttrain.search.sampling import best_of_n, majority_vote, sample_solutions, vote_candidates, weighted_vote

__all__ = [
    "SEARCH_METHODS",
    "Candidate",
    "OrmScorer",
    "Policy",
    "PrmScorer",
    "SearchResult",
    "Tokenizer",
    "aggregate_steps",
    "split_steps",
    "best_of_n",
    "majority_vote",
    "weighted_vote",
    "sample_solutions",
    "vote_candidates",
    "prm_beam_search",
    "mcts",
    "budget_forcing",
    "compute_optimal",
    "classify_difficulty",
]
