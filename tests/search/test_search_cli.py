"""`posttrain search` pieces: run_search over a scripted policy with a known right answer, option
filtering per method, and the scaling table on a tiny model with a fake PRM."""
import re

import pytest

from posttrain.eval.benchmarks import load_benchmark
from posttrain.models import build_char_tokenizer
from posttrain.rollout.base import Completion
from posttrain.search import Policy
from posttrain.search.cli import SearchOptions, _options, run_search


class AdditionEngine:
    """Greedy answers sum+1 (wrong); sample j answers the sum when j % 3 != 2, else sum+1, so the
    majority of 3+ samples is right; the step '<sum>' line is scored by StepScorer."""

    def __init__(self, tok):
        self.tok = tok

    def generate(self, prompts, params):
        out = []
        for ids in prompts:
            a, b = map(int, re.search(r"(\d+)\+(\d+)", self.tok.decode(ids)).groups())
            if params.temperature == 0:
                texts = [f"#### {a + b + 1}"]
            else:
                texts = [f"#### {a + b + (j % 3 == 2)}" for j in range(params.n)]
            out.append([Completion(self.tok.encode(t, add_special_tokens=False), [0.0] * len(t), "stop", t) for t in texts])
        return out

    def update_weights(self, named_weights, version):
        pass


class OracleScorer:
    def score_steps(self, prompt, steps_list):
        a, b = map(int, re.search(r"(\d+)\+(\d+)", prompt).groups())
        return [[1.0 if s[-1] == f"#### {a + b}" else 0.0] for s in steps_list]


def test_run_search_accuracy_and_tokens():
    tok = build_char_tokenizer()
    loaded = load_benchmark("task:addition", limit=5)
    policy = Policy(AdditionEngine(tok), tok, chat=True)
    opts = SearchOptions(n=3, max_new_tokens=16)
    rows = run_search(policy, OracleScorer(), loaded, ["greedy", "majority_vote", "best_of_n"], opts, progress=False)
    acc = {r["method"]: r["accuracy"] for r in rows}
    assert acc == {"greedy": 0.0, "majority_vote": 1.0, "best_of_n": 1.0}
    toks = {r["method"]: r["tokens_per_problem"] for r in rows}
    assert toks["majority_vote"] == toks["best_of_n"] == pytest.approx(3 * toks["greedy"], rel=0.2)


def test_options_follow_each_method_signature():
    from posttrain.search import SEARCH_METHODS

    opts = SearchOptions()
    beam = _options(SEARCH_METHODS.get("prm_beam_search"), opts, str, None, 7)
    assert beam["num_beams"] == 4 and beam["max_step_tokens"] == 256 and beam["seed"] == 7 and "n" not in beam
    bon = _options(SEARCH_METHODS.get("best_of_n"), opts, str, None, 1)
    assert bon["n"] == 8 and "num_beams" not in bon and "match" not in bon


def test_scaling_rows_tiny_model(tmp_path, tiny):
    from posttrain.eval.scaling import scaling_table

    class LengthScorer:  # prefers shorter steps: deterministic, needs no training
        def score_steps(self, prompt, steps_list):
            return [[1.0 / (1 + len(s)) for s in steps] for steps in steps_list]

    model, tok = tiny
    rows, png = scaling_table(model, tok, LengthScorer(), "addition:digits=1,scratchpad=1", 3, out_dir=tmp_path,
                              ks=(1, 2), beams=((1, 2),), max_new_tokens=6, beam_max_steps=3)
    by = {(r["method"], r["budget"]): r for r in rows}
    assert set(by) == {("greedy", 1), ("maj@k", 1), ("maj@k", 2), ("prm_best_of_k", 1), ("prm_best_of_k", 2),
                       ("prm_weighted_vote", 1), ("prm_weighted_vote", 2), ("prm_beam_search", 2)}
    assert by[("maj@k", 2)]["tokens_per_problem"] == by[("prm_best_of_k", 2)]["tokens_per_problem"]
    assert by[("maj@k", 1)]["accuracy"] == by[("prm_best_of_k", 1)]["accuracy"]  # k=1: the same sample
    assert png.exists() and png.stat().st_size > 1000 and (tmp_path / "scaling.md").exists()
    assert all(len(r["correct"]) == 3 and r["accuracy"] == sum(r["correct"]) / 3 for r in rows)


def test_paired_comparison():
    from posttrain.eval.scaling import paired_comparison

    a = {"problems": 4, "correct": [1, 1, 0, 1]}
    b = {"problems": 4, "correct": [0, 1, 0, 0]}
    c = paired_comparison(a, b)
    assert (c["difference"], c["only_a"], c["only_b"]) == (0.5, 2, 0)
    se = ((2 * 0.5**2 + 2 * 0.5**2) / 3 / 4) ** 0.5
    assert c["ci95"] == pytest.approx((0.5 - 1.96 * se, 0.5 + 1.96 * se))
    with pytest.raises(ValueError):
        paired_comparison(a, {"problems": 3, "correct": [1, 1, 1]})
