"""Search methods on scripted toy worlds where the right answer is known.

`StepWorld`: a solution is `depth` steps then a final "answer \\boxed{N}". Step i is correct
("s{i}=ok") with probability `p_ok`; the single most likely step is the wrong "s{i}=bad1" when
p_ok < 1/3, so greedy decoding is wrong. Once a path is wrong it stays wrong and ends in one of four
wrong answers drawn uniformly; the all-correct path ends in 42.
"""
import random

import pytest

from posttrain.rollout.base import Completion, SamplingParams
from posttrain.search import (
    SEARCH_METHODS,
    Policy,
    SearchResult,
    aggregate_steps,
    best_of_n,
    budget_forcing,
    compute_optimal,
    majority_vote,
    mcts,
    prm_beam_search,
    split_steps,
    weighted_vote,
)
from posttrain.search.compute_optimal import classify_difficulty

PROMPT = "Q?\n"
WRONG = ["13", "10", "11", "12", "14", "15", "16", "17"]  # greedy takes the first


class CharTokenizer:
    def encode(self, text, add_special_tokens=True):
        return [ord(ch) for ch in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class ScriptedEngine:
    """RolloutEngine over a `world(context, rng_or_None) -> full continuation` function."""

    def __init__(self, world):
        self.world, self.tok = world, CharTokenizer()
        self.tokens_generated = 0
        self.calls = 0

    def generate(self, prompts, params: SamplingParams):
        self.calls += 1
        out = []
        for p_idx, ids in enumerate(prompts):
            context = self.tok.decode(ids)
            group = []
            for j in range(params.n):
                rng = None if params.temperature == 0 else random.Random(f"{params.seed}|{context}|{j}")
                group.append(self._complete(self.world(context, rng), params))
            out.append(group)
        return out

    def _complete(self, cont: str, params: SamplingParams) -> Completion:
        hits = [(cont.find(s) + len(s), s) for s in params.stop if s in cont]
        cut, stop = min(hits) if hits else (None, None)
        if cut is not None and cut <= params.max_new_tokens:
            text, finish = cont[:cut], "stop"
        elif len(cont) > params.max_new_tokens:
            text, finish, stop = cont[: params.max_new_tokens], "length", None
        else:
            text, finish, stop = cont, "stop", None
        self.tokens_generated += len(text)
        return Completion(self.tok.encode(text), [0.0] * len(text), finish, text, stop)

    def update_weights(self, named_weights, version):
        pass


def _pick(options, rng):
    """options: [(text, prob)]; greedy (rng None) takes the most probable, first on ties."""
    if rng is None:
        return max(options, key=lambda o: o[1])[0]
    return rng.choices([o[0] for o in options], [o[1] for o in options])[0]


class StepWorld:
    def __init__(self, depth=4, p_ok=0.3):
        self.depth, self.p_ok = depth, p_ok

    def ok_step(self, i):
        return f"s{i}=ok"

    def __call__(self, context, rng):
        done = [s for s in context[len(PROMPT):].split("\n")[:-1]]  # complete steps so far
        correct = all(s == self.ok_step(i) for i, s in enumerate(done))
        out = []
        for i in range(len(done), self.depth):
            if correct:
                q = 1 - self.p_ok
                step = _pick([(self.ok_step(i), self.p_ok), (f"s{i}=bad1", 0.5 * q), (f"s{i}=bad2", 0.3 * q),
                              (f"s{i}=bad3", 0.2 * q)], rng)
                correct = step == self.ok_step(i)
            else:
                step = _pick([(f"s{i}=junk", 0.6), (f"s{i}=meh", 0.4)], rng)
            out.append(step + "\n")
        final = "42" if correct else _pick([(w, 1 / len(WRONG)) for w in WRONG], rng)
        return "".join(out) + f"answer \\boxed{{{final}}}"


class StepPRM:
    """Step i scores 0.9 if steps 0..i are all correct, else 0.1."""

    def __init__(self, world):
        self.world = world

    def score_steps(self, prompt, steps_list):
        assert prompt == PROMPT
        out = []
        for steps in steps_list:
            ok, scores = True, []
            for i, s in enumerate(steps):
                good = s == self.world.ok_step(i) if i < self.world.depth else s == "answer \\boxed{42}"
                ok = ok and good
                scores.append(0.9 if ok else 0.1)
            out.append(scores)
        return out


class AnswerORM:
    def score(self, prompt, completions):
        return [1.0 if c.endswith("\\boxed{42}") else 0.0 for c in completions]


def _policy(world):
    engine = ScriptedEngine(world)
    return Policy(engine, engine.tok), engine


def _greedy_answer(world):
    policy, _ = _policy(world)
    return majority_vote(policy, PROMPT, n=1, temperature=0.0).answer


def _solved_rate(world, n=400):
    policy, _ = _policy(world)
    r = majority_vote(policy, PROMPT, n=n, seed=123, max_new_tokens=200)
    return sum(c.answer == "42" for c in r.candidates) / n


def test_toy_world_is_hard_for_plain_decoding():
    assert _greedy_answer(StepWorld(depth=1)) == "13"
    assert _greedy_answer(StepWorld(depth=4)) == "13"
    assert _solved_rate(StepWorld(depth=1)) == pytest.approx(0.3, abs=0.07)
    assert _solved_rate(StepWorld(depth=4)) < 0.03


def test_step_helpers():
    assert split_steps("a\nb\n\nc\n") == ["a", "b", "c"]
    assert split_steps("abc") == ["abc"]
    assert aggregate_steps([0.9, 0.5, 0.8], "min") == 0.5
    assert aggregate_steps([0.9, 0.5, 0.8], "last") == 0.8
    assert aggregate_steps([0.9, 0.5, 0.8], "prod") == pytest.approx(0.36)
    with pytest.raises(KeyError):
        aggregate_steps([1.0], "max")


def test_majority_vote_beats_greedy_when_wrong_answers_scatter():
    world = StepWorld(depth=1, p_ok=0.3)  # 42 w.p. 0.3; each wrong answer w.p. 0.175
    policy, engine = _policy(world)
    r = majority_vote(policy, PROMPT, n=64, seed=1)
    assert r.answer == "42"
    assert len(r.candidates) == 64 and r.score == pytest.approx(sum(c.answer == "42" for c in r.candidates) / 64)
    assert r.tokens_spent == engine.tokens_generated == sum(len(c.token_ids) for c in r.candidates)


@pytest.mark.parametrize("scorer", ["orm", "prm_min", "prm_last", "prm_prod"])
def test_best_of_n_finds_the_rare_correct_solution(scorer):
    world = StepWorld(depth=2, p_ok=0.3)  # solved w.p. 0.09: plain sampling and voting fail
    policy, engine = _policy(world)
    sc = AnswerORM() if scorer == "orm" else StepPRM(world)
    agg = scorer.split("_")[1] if scorer != "orm" else "min"
    r = best_of_n(policy, PROMPT, sc, n=32, seed=1, step_agg=agg)
    assert r.answer == "42" and r.text == "s0=ok\ns1=ok\nanswer \\boxed{42}"
    assert majority_vote(_policy(world)[0], PROMPT, n=32, seed=1).answer != "42"
    assert r.tokens_spent == engine.tokens_generated == sum(len(c.token_ids) for c in r.candidates)
    with pytest.raises(ValueError):
        best_of_n(policy, PROMPT, None)


def test_weighted_vote_lets_the_verifier_outvote_the_crowd():
    world = StepWorld(depth=2, p_ok=0.3)
    policy, engine = _policy(world)
    r = weighted_vote(policy, PROMPT, StepPRM(world), n=32, seed=1)
    assert r.answer == "42"
    n_right = sum(c.answer == "42" for c in r.candidates)
    assert 0 < n_right < 32 - n_right  # a minority answer, outvoted without weights
    assert r.tokens_spent == engine.tokens_generated


def test_prm_beam_search_solves_a_deep_problem():
    world = StepWorld(depth=4, p_ok=0.3)
    policy, engine = _policy(world)
    r = prm_beam_search(policy, PROMPT, StepPRM(world), num_beams=2, expansions_per_beam=8, seed=0)
    assert r.answer == "42" and r.score == pytest.approx(0.9)
    assert r.text == "s0=ok\ns1=ok\ns2=ok\ns3=ok\nanswer \\boxed{42}"
    # every generated token is counted, including the pruned expansions
    assert r.tokens_spent == engine.tokens_generated > len(r.text) * 2
    # the same number of full samples does not contain a solution
    spent_samples = r.tokens_spent // len(r.text) + 1
    bon = best_of_n(_policy(world)[0], PROMPT, AnswerORM(), n=spent_samples, seed=0)
    assert bon.answer != "42"


@pytest.mark.parametrize("dedupe,n_cands", [(False, 2), (True, 1)])
def test_prm_beam_search_counts_pruned_tokens_exactly(dedupe, n_cands):
    # greedy, 1 beam x 2 expansions, depth 2: call 1 makes "s0=ok\n" twice (12 tokens), call 2
    # "s1=ok\n" twice (12; one copy pruned), call 3 finishes "answer \boxed{42}" twice (2 x 17)
    world = StepWorld(depth=2, p_ok=0.999)
    policy, engine = _policy(world)
    r = prm_beam_search(policy, PROMPT, StepPRM(world), num_beams=1, expansions_per_beam=2,
                        temperature=0.0, dedupe=dedupe)
    assert engine.calls == 3
    assert r.tokens_spent == engine.tokens_generated == 12 + 12 + 34
    assert len(r.candidates) == n_cands and r.answer == "42"


def test_mcts_with_prm_values_solves_a_deep_problem():
    world = StepWorld(depth=4, p_ok=0.3)
    policy, engine = _policy(world)
    kw = dict(iterations=60, exploration=0.5, children_per_expansion=4, max_children=8, seed=0)
    r = mcts(policy, PROMPT, StepPRM(world), **kw)
    assert r.answer == "42" and r.text == "s0=ok\ns1=ok\ns2=ok\ns3=ok\nanswer \\boxed{42}"
    assert r.tokens_spent == engine.tokens_generated
    again = mcts(_policy(world)[0], PROMPT, StepPRM(world), **kw)
    assert (again.text, again.tokens_spent) == (r.text, r.tokens_spent)  # seeded: reproducible


def test_mcts_with_rollout_values():
    world = StepWorld(depth=2, p_ok=0.3)
    policy, engine = _policy(world)
    r = mcts(policy, PROMPT, AnswerORM(), value="rollout", iterations=12, children_per_expansion=2,
             max_children=4, seed=0)
    assert r.answer == "42"
    assert r.tokens_spent == engine.tokens_generated  # rollouts are counted
    assert any(c.score == 1.0 for c in r.candidates)


class ThinkWorld:
    """Thinks "guess 41" and stops; after a "Wait" it re-checks to 42. `endless` never stops thinking.
    After </think> it answers \\boxed{last number thought}, or \\boxed{7} if none."""

    def __init__(self, endless=False):
        self.endless = endless

    def __call__(self, context, rng):
        body = context[len(PROMPT):]
        if "</think>" in body:
            thought = body.split("</think>")[0]
            nums = [w for w in thought.replace("</think>", " ").split() if w.isdigit()]
            return f"\\boxed{{{nums[-1] if nums else 7}}}"
        if self.endless:
            return "hmm " * 100 + "</think>\\boxed{7}"
        if "Wait" in body:
            return " recheck 42</think>\\boxed{42}"
        return "guess 41</think>\\boxed{41}"


def test_budget_forcing_min_budget_appends_wait():
    policy, engine = _policy(ThinkWorld())
    plain = budget_forcing(policy, PROMPT, min_thinking_tokens=0)
    assert plain.answer == "41" and plain.text == "guess 41</think>\\boxed{41}"
    policy, engine = _policy(ThinkWorld())
    r = budget_forcing(policy, PROMPT, min_thinking_tokens=20)
    assert r.text == "guess 41Wait recheck 42</think>\\boxed{42}"
    assert r.answer == "42" and r.info["waits"] == 1
    # generated: "guess 41</think>" (16, delimiter later removed) + " recheck 42</think>" (19) + answer (10)
    assert r.info["thinking_tokens"] == 35
    assert r.tokens_spent == engine.tokens_generated == 16 + 19 + 10
    capped = budget_forcing(_policy(ThinkWorld())[0], PROMPT, min_thinking_tokens=20, max_waits=0)
    assert capped.answer == "41"


def test_budget_forcing_max_budget_forces_the_answer():
    policy, engine = _policy(ThinkWorld(endless=True))
    r = budget_forcing(policy, PROMPT, max_thinking_tokens=12, answer_prefix="Final Answer: ")
    assert r.text == "hmm hmm hmm </think>Final Answer: \\boxed{7}"
    assert r.answer == "7" and r.info["forced_end"] == 1 and r.info["thinking_tokens"] == 12
    assert r.tokens_spent == engine.tokens_generated == 12 + len("\\boxed{7}")


def test_budget_forcing_returns_a_response_that_ends_while_thinking():
    policy, engine = _policy(lambda context, rng: "just \\boxed{5}")  # EOS, never writes </think>
    r = budget_forcing(policy, PROMPT, min_thinking_tokens=100)
    assert r.answer == "5" and r.info["waits"] == 0 and engine.calls == 1
    assert r.tokens_spent == engine.tokens_generated == len("just \\boxed{5}")


def test_compute_optimal_easy_question_stops_after_agreeing_probes():
    world = StepWorld(depth=1, p_ok=0.999)
    policy, engine = _policy(world)
    r = compute_optimal(policy, PROMPT, StepPRM(world), token_budget=10_000, probe_samples=4, seed=0)
    assert r.answer == "42" and r.info["difficulty"] == "easy" and r.info["agreement"] == 1.0
    assert r.tokens_spent == engine.tokens_generated == 4 * len("s0=ok\nanswer \\boxed{42}")


def test_compute_optimal_hard_question_uses_beam_search():
    world = StepWorld(depth=4, p_ok=0.3)
    policy, engine = _policy(world)
    r = compute_optimal(policy, PROMPT, StepPRM(world), token_budget=1200, probe_samples=8, seed=0)
    assert r.info["difficulty"] == "hard" and r.info["chosen"] == "prm_beam_search"
    assert r.answer == "42"
    assert r.tokens_spent == engine.tokens_generated
    # without a PRM the same question falls back to voting, which cannot find it
    r2 = compute_optimal(_policy(world)[0], PROMPT, None, token_budget=1200, probe_samples=8, seed=0)
    assert r2.info["chosen"] == "majority_vote" and r2.answer != "42"


def test_classify_difficulty():
    assert [classify_difficulty(a) for a in (1.0, 0.75, 0.6, 0.5, 0.25)] == ["easy", "easy", "medium", "medium", "hard"]


def test_every_registered_method_runs_with_the_common_signature_and_counts_tokens():
    assert set(SEARCH_METHODS.names()) == {
        "best_of_n", "majority_vote", "weighted_vote", "prm_beam_search", "mcts", "budget_forcing", "compute_optimal"
    }
    for name in SEARCH_METHODS:
        world = ThinkWorld() if name == "budget_forcing" else StepWorld(depth=2, p_ok=0.5)
        policy, engine = _policy(world)
        policy.tokens_spent = 1000  # a reused policy: results report their own spend
        r = SEARCH_METHODS.get(name)(policy, PROMPT, StepPRM(StepWorld(depth=2)), seed=0)
        assert isinstance(r, SearchResult)
        assert r.tokens_spent == engine.tokens_generated > 0, name
        assert policy.tokens_spent == 1000 + engine.tokens_generated
