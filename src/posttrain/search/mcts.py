"""Monte Carlo tree search over reasoning steps with UCT selection.

UCT (Kocsis & Szepesvari 2006, "Bandit based Monte-Carlo Planning") applied to step-level LLM
reasoning as in RAP (Hao et al. 2023) and rStar / ReST-MCTS* style PRM-guided search: a node is a
partial solution (prompt + steps); an edge is one step sampled from the policy up to ``step_sep``.
Each iteration selects a leaf by UCT, ``Q + c * sqrt(ln N_parent / N_child)``, expands it with
``children_per_expansion`` sampled next steps, evaluates each new node, and backs the values up.

Node value:
- ``value="prm"``: ``step_agg`` (default "min") over the PRM's step scores of the partial solution;
- ``value="rollout"``: complete the solution from the node with one sample and score the finished
  text with the scorer (an ORM ``score``, or a PRM aggregated over steps). Rollouts are counted in
  ``tokens_spent`` and kept as candidate solutions.

Departures / choices:
- Expansion is batched: a node is expanded ``children_per_expansion`` children at a time until it
  has been expanded ``max_children / children_per_expansion`` times; selection descends only into
  fully expanded nodes (plain UCT, no progressive widening or priors).
- A sampled step whose text repeats a sibling's is merged into that sibling (its value is backed up
  through it) instead of making a duplicate child.
- A completion that stops without the separator (EOS) is terminal; reaching a terminal node or
  ``max_depth`` again just backs its stored value up once more.
- Final answer: follow the most-visited child from the root (ties: higher mean value, then first
  created); if that path ends in a terminal node it is the answer, otherwise the best-valued complete
  solution found (terminal nodes and rollouts; earliest on ties).
- Randomness: only the engine samples; each engine call gets a seed derived from ``seed``, so a
  seeded search with a seeded engine is reproducible. UCT ties go to the first child.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from posttrain.rollout.base import SamplingParams
from posttrain.search.base import (
    SEARCH_METHODS,
    Candidate,
    Policy,
    PrmScorer,
    Scorer,
    SearchResult,
    aggregate_steps,
    default_extract,
    derive_seed,
    score_texts,
    split_steps,
)

__all__ = ["mcts"]


@dataclass(eq=False)
class _Node:
    ids: list[int]  # generated ids after the prompt
    text: str  # generated text after the prompt
    parent: "_Node | None" = None
    depth: int = 0
    terminal: bool = False
    finish_reason: str = "stop"
    value: float = 0.0  # this node's own evaluation
    visits: int = 0
    value_sum: float = 0.0
    expansions: int = 0
    children: list["_Node"] = field(default_factory=list)

    def mean(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


def _backup(node: _Node | None, value: float) -> None:
    while node is not None:
        node.visits += 1
        node.value_sum += value
        node = node.parent


def _uct_child(node: _Node, c: float) -> _Node:
    log_n = math.log(max(node.visits, 1))
    return max(node.children, key=lambda ch: ch.mean() + c * math.sqrt(log_n / max(ch.visits, 1)))


@dataclass
class _Search:
    policy: Policy
    prompt: str
    prompt_ids: list[int]
    scorer: Scorer
    sep: str
    value_mode: str
    step_agg: str
    step_params: SamplingParams
    rollout_params: SamplingParams
    seed: int | None
    extract: Callable[[str], str | None]
    solutions: list[Candidate] = field(default_factory=list)

    def expand(self, node: _Node, n: int, it: int) -> list[_Node]:
        params = replace(self.step_params, n=n, seed=derive_seed(self.seed, it, 0))
        (group,) = self.policy.generate([self.prompt_ids + node.ids], params)
        node.expansions += 1
        new, merged = [], []
        for comp in group:
            text = self.policy.text_of(comp)
            at_sep = comp.finish_reason == "stop" and (comp.stop_reason == self.sep or text.endswith(self.sep))
            child = _Node(node.ids + list(comp.token_ids), node.text + text, node, node.depth + 1,
                          terminal=comp.finish_reason == "stop" and not at_sep, finish_reason=comp.finish_reason)
            same = next((ch for ch in node.children + new if ch.text == child.text), None)
            (merged if same is not None else new).append(same if same is not None else child)
        node.children.extend(new)
        return new + merged

    def evaluate(self, nodes: list[_Node], it: int) -> None:
        fresh = list({id(n): n for n in nodes if n.visits == 0}.values())
        if not fresh:
            return
        if self.value_mode == "prm":
            if not isinstance(self.scorer, PrmScorer):
                raise ValueError("mcts value='prm' needs a PRM scorer with score_steps()")
            per_step = self.scorer.score_steps(self.prompt, [split_steps(n.text, self.sep) for n in fresh])
            for n, s in zip(fresh, per_step):
                n.value = aggregate_steps(s, self.step_agg)
        else:
            open_nodes = [n for n in fresh if not n.terminal]
            params = replace(self.rollout_params, seed=derive_seed(self.seed, it, 1))
            groups = self.policy.generate([self.prompt_ids + n.ids for n in open_nodes], params)
            ends = {id(n): g[0] for n, g in zip(open_nodes, groups)}
            texts = [n.text + (self.policy.text_of(ends[id(n)]) if id(n) in ends else "") for n in fresh]
            values = score_texts(self.scorer, self.prompt, texts, self.sep, self.step_agg)
            for n, text, v in zip(fresh, texts, values):
                n.value = v
                if id(n) in ends:
                    comp = ends[id(n)]
                    self.solutions.append(
                        Candidate(text, n.ids + list(comp.token_ids), self.extract(text), v, comp.finish_reason)
                    )
        for n in fresh:
            if n.terminal:
                self.solutions.append(Candidate(n.text, n.ids, self.extract(n.text), n.value, n.finish_reason))


def _final(root: _Node, search: _Search) -> Candidate | None:
    node = root
    while node.children:
        node = max(node.children, key=lambda ch: (ch.visits, ch.mean()))
    if node.terminal:
        return next(c for c in search.solutions if c.text == node.text)
    if search.solutions:
        return max(search.solutions, key=lambda c: c.score)  # max keeps the first on ties
    return None


@SEARCH_METHODS.register("mcts")
def mcts(
    policy: Policy,
    prompt: str,
    scorer: Scorer | None = None,
    *,
    iterations: int = 32,
    children_per_expansion: int = 2,
    max_children: int = 4,
    exploration: float = 1.0,
    value: str = "prm",
    max_depth: int = 16,
    max_step_tokens: int = 256,
    rollout_max_tokens: int = 1024,
    temperature: float = 1.0,
    top_p: float = 1.0,
    step_sep: str = "\n",
    step_agg: str = "min",
    seed: int | None = None,
    extract: Callable[[str], str | None] = default_extract,
) -> SearchResult:
    """UCT search over steps, valued by a PRM or by scored rollouts; see the module docstring."""
    if scorer is None or value not in ("prm", "rollout"):
        raise ValueError("mcts needs a scorer and value='prm' or 'rollout'")
    start = policy.tokens_spent
    search = _Search(
        policy, prompt, policy.encode_prompt(prompt), scorer, step_sep, value, step_agg,
        SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_step_tokens, stop=(step_sep,)),
        SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=rollout_max_tokens),
        seed, extract,
    )
    root = _Node([], "")
    max_expansions = max(1, math.ceil(max_children / children_per_expansion))
    for it in range(iterations):
        node = root
        while not node.terminal and node.depth < max_depth and node.expansions >= max_expansions and node.children:
            node = _uct_child(node, exploration)
        if node.terminal or node.depth >= max_depth or node.expansions >= max_expansions:
            _backup(node, node.value)
            continue
        children = search.expand(node, children_per_expansion, it)
        search.evaluate(children, it)
        for child in children:  # a merged duplicate is backed up once per sample
            _backup(child, child.value)
    chosen = _final(root, search)
    return SearchResult(
        answer=chosen.answer if chosen else None,
        score=chosen.score if chosen else None,
        text=chosen.text if chosen else "",
        tokens_spent=policy.tokens_spent - start,
        candidates=list(search.solutions),
        method="mcts",
        info={"iterations": float(iterations), "root_visits": float(root.visits)},
    )
