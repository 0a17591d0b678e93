import math
from fractions import Fraction

import pytest

from posttrain.eval.metrics import (
    ProblemSamples,
    Sample,
    aggregate_metrics,
    canonical_answer,
    canonical_match,
    maj_at_k,
    math_match,
    mean_at_k,
    pass_at_k,
    vote,
)


def _exact_pass(n, c, k):
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 2 / 5),  # 1 - C(3,1)/C(5,1)
        (5, 2, 2, 7 / 10),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 3, 9 / 10),  # 1 - 1/10
        (5, 2, 4, 1.0),  # n - c < k: every 4-subset has a correct sample
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (4, 0, 1, 0.0),  # c = 0
        (4, 0, 4, 0.0),  # c = 0, k = n
        (4, 4, 1, 1.0),  # c = n
        (4, 1, 4, 1.0),  # k = n with one correct
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_k1_is_fraction_correct_and_large_n_is_stable():
    for n, c in [(7, 3), (1000, 1), (1000, 999)]:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
    # binomials of this size overflow float; the product form stays exact to ~1e-12
    assert pass_at_k(2000, 50, 100) == pytest.approx(_exact_pass(2000, 50, 100), abs=1e-10)
    assert pass_at_k(200, 100, 100) == pytest.approx(_exact_pass(200, 100, 100), abs=1e-12)


def test_pass_at_k_is_monotone_in_k():
    vals = [pass_at_k(20, 3, k) for k in range(1, 21)]
    assert all(a < b for a, b in zip(vals[:17], vals[1:18]))
    assert vals[-1] == 1.0


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_args(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_maj_at_k_first_k_and_ties():
    answers = ["1", "2", "2", "1", "3"]
    assert maj_at_k(answers, "1", 1) == 1.0
    assert maj_at_k(answers, "1", 3) == 0.0  # "2" has 2 of 3
    assert maj_at_k(answers, "2", 3) == 1.0
    # k=4: "1" and "2" tie at 2 votes; "1" appeared first and wins
    assert maj_at_k(answers, "1", 4) == 1.0
    assert maj_at_k(answers, "2", 4) == 0.0
    assert maj_at_k(answers, "1", 5) == 1.0  # k = n, still a tie broken by first appearance
    # a tie where the gold appears second
    assert maj_at_k(["4", "3", "3", "4"], "3", 4) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(answers, "1", 6)


def test_maj_at_k_none_never_wins():
    assert maj_at_k([None, None, "5"], "5", 3) == 1.0
    assert maj_at_k([None, None, "5"], "5", 2) == 0.0  # no answers: no winner, counted wrong
    r = vote([None, None, None])
    assert r.answer is None and r.weight == 0.0 and r.classes == []


def test_canonical_answer_normalization():
    cases = {"7.0": "7", " 7.50 ": "7.5", "+7": "7", "-0.0": "0", "1,000": "1000", "\\boxed{12}": "12",
             "$3$": "3", ".5": "0.5", "007": "7", "-7.0": "-7", "7.": "7", "\\text{Yes}": "yes"}
    for raw, want in cases.items():
        assert canonical_answer(raw) == want, raw
    assert not canonical_match("7", "70")
    assert maj_at_k(["7.0", "8", "7", "8"], "7", 4) == 1.0  # "7.0" and "7" are one class


def test_maj_at_k_math_verify_equivalence_is_optional():
    answers = ["1/2", "0.5", "3", "3"]
    assert maj_at_k(answers, "0.5", 4) == 0.0  # canonical: 3 has 2 votes, 1/2 and 0.5 one each
    assert maj_at_k(answers, "0.5", 4, match=math_match) == 1.0  # {1/2, 0.5} ties 3 and comes first


def test_weighted_vote():
    r = vote(["a", "b", "b", None], [0.9, 0.3, 0.4, 5.0])
    assert r.answer == "a" and r.weight == pytest.approx(0.9)
    assert [(rep, pytest.approx(w), m) for rep, w, m in r.classes] == [("a", 0.9, [0]), ("b", 0.7, [1, 2])]


def test_mean_at_k():
    correct = [True, False, True, True]
    assert mean_at_k(correct, 1) == 1.0
    assert mean_at_k(correct, 2) == 0.5
    assert mean_at_k(correct, 4) == 0.75
    with pytest.raises(ValueError):
        mean_at_k(correct, 5)


def _problems():
    p1 = ProblemSamples("3", [Sample(a, t) for a, t in zip(["3", "4", "3", "4"], [10, 20, 30, 40])], Sample("3", 7))
    p2 = ProblemSamples("5", [Sample(a, 5) for a in ["5", None, "6", "6"]], Sample("6", 9))
    return [p1, p2]


def test_aggregate_metrics_hand_values():
    m = aggregate_metrics(_problems(), ks=(1, 2, 4))
    assert m.num_problems == 2 and m.samples_per_problem == 4
    assert m.greedy_acc == 0.5
    assert m.avg_greedy_tokens == 8.0
    assert m.avg_tokens == pytest.approx(120 / 8)
    # p1: n=4, c=2; p2: n=4, c=1
    assert m.pass_at[1] == pytest.approx((0.5 + 0.25) / 2)
    assert m.pass_at[2] == pytest.approx((5 / 6 + 0.5) / 2)
    assert m.pass_at[4] == pytest.approx(1.0)
    # maj: p1 ties 3/4 -> "3" (first) at every k; p2 "5" for k<=2, "6" at k=4
    assert m.maj_at == {1: 1.0, 2: 1.0, 4: 0.5}
    assert m.mean_at[1] == 1.0 and m.mean_at[2] == 0.5 and m.mean_at[4] == pytest.approx(0.375)
    d = m.as_dict()
    assert d["pass@2"] == pytest.approx(2 / 3) and d["maj@4"] == 0.5 and d["greedy_acc"] == 0.5


def test_aggregate_metrics_precomputed_verdicts_and_errors():
    p = ProblemSamples("x", [Sample("anything", 1, correct=True), Sample("x", 1, correct=False)])
    m = aggregate_metrics([p], ks=(1, 2))
    assert m.pass_at[1] == 0.5 and m.pass_at[2] == 1.0
    assert m.mean_at[1] == 1.0  # the verdict, not the string match, decides
    assert m.greedy_acc is None and "greedy_acc" not in m.as_dict()
    with pytest.raises(ValueError):
        aggregate_metrics([p], ks=(3,))
    with pytest.raises(ValueError):
        aggregate_metrics([], ks=(1,))
