import json
import random

import pytest

from posttrain.config import ConfigError
from posttrain.data.sources import DataError
from posttrain.datatools import select
from posttrain.datatools.config import DataIn, DataToolsConfig, SelectOptions
from posttrain.datatools.select import jaccard_clusters, limr_scores


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(tmp_path, rows, columns=None, on_error="raise", seed=0, **opts):
    f = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    cfg = DataToolsConfig(cmd="select", out=str(out), overwrite=True, seed=seed,
                          data=DataIn(path=str(f), columns=columns or {}, on_error=on_error),
                          select=SelectOptions(**opts))
    report = select.run(cfg)
    kept = [json.loads(l) for l in open(out / "data.jsonl")]
    removed = [json.loads(l) for l in open(out / "removed.jsonl")]
    return kept, removed, report


def _row(name, type_, p, length, **kw):
    r = {"prompt": f"problem {name}", "completion": "x" * length, "type": type_, **kw}
    if p != "absent":
        r["pass_rate"] = p
    return r


# name, group, pass_rate, completion length
S1_ROWS = [_row("r1", "A", 0.25, 10), _row("r2", "A", 0.25, 30), _row("r3", "A", 0.5, 50),
           _row("r4", "B", 0.125, 5), _row("r5", "B", 0.0, 100), _row("r6", "B", 0.75, 40),
           _row("r7", "A", 0.25, 60, correct=False), _row("r8", "C", None, 20), _row("r9", "B", 0.5, 10, correct=True)]


def _names(rows):
    return [r["prompt"].split()[-1] for r in rows]


def test_s1_order_round_robin_hardest_then_longest(tmp_path):
    # tier "solved sometimes": A ranks r2 (0.25, 30) r1 (0.25, 10) r3 (0.5); B ranks r4 (0.125) r9 (0.5)
    # round 1: r2, r4 -> r4 (0.125) first; round 2: r1, r9; round 3: r3; then unknown r8; then never solved r5
    kept, removed, report = _run(tmp_path, S1_ROWS, n=0, diversity_column="type")
    ranks = {r["prompt"].split()[-1]: r["select_rank"] for r in kept}
    assert ranks == {"r4": 1, "r2": 2, "r1": 3, "r9": 4, "r3": 5, "r8": 6, "r5": 7}
    assert _names(kept) == ["r1", "r2", "r3", "r4", "r5", "r8", "r9"]  # written in input order
    assert [(r["row"], r["reason"]) for r in removed] == [
        (6, "difficulty: pass_rate 0.75 > max_pass_rate 0.5"), (7, "quality: correct is false")]
    assert report["removed_quality"] == 1 and report["removed_difficulty"] == 1 and report["groups"] == 3


def test_s1_n_cuts_the_order_and_unsolved_drop(tmp_path):
    kept, removed, report = _run(tmp_path, S1_ROWS, n=4, diversity_column="type")
    assert _names(kept) == ["r1", "r2", "r4", "r9"]
    why = {r["data"]["prompt"].split()[-1]: r["reason"] for r in removed}
    assert set(why) == {"r3", "r5", "r6", "r7", "r8"}
    assert why["r3"].startswith("diversity: not among the n=4 selected (A, place 5)")
    assert report["selected_per_group"] == {"A": 2, "B": 2}
    kept, removed, _ = _run(tmp_path, S1_ROWS, n=0, diversity_column="type", unsolved="drop")
    why = {r["data"]["prompt"].split()[-1]: r["reason"] for r in removed}
    assert "r5" not in _names(kept) and why["r5"] == "difficulty: pass_rate 0 (never solved; --select.unsolved drop)"


def test_s1_is_deterministic_and_max_pass_rate_applies(tmp_path):
    a = _run(tmp_path, S1_ROWS, n=3, diversity_column="type", seed=5)[0]
    b = _run(tmp_path, S1_ROWS, n=3, diversity_column="type", seed=5)[0]
    assert a == b and _names(a) == ["r1", "r2", "r4"]
    kept, _, _ = _run(tmp_path, S1_ROWS, n=0, diversity_column="type", max_pass_rate=0.25)
    assert _names(kept) == ["r1", "r2", "r4", "r5", "r8"]


def test_s1_without_pass_rates_orders_by_diversity_then_length(tmp_path):
    rows = [_row("a1", "A", "absent", 5), _row("a2", "A", "absent", 50), _row("b1", "B", "absent", 20)]
    kept, _, report = _run(tmp_path, rows, n=2, diversity_column="type")
    assert {r["prompt"].split()[-1]: r["select_rank"] for r in kept} == {"a2": 1, "b1": 2}
    assert report["pass_rate_column"] is False and report["selected_tiers"] == {"unknown": 2}


def test_s1_clusters_spread_the_selection(tmp_path):
    rows = [{"prompt": "solve the quadratic equation x squared minus four", "completion": "y" * 50, "pass_rate": 0.1},
            {"prompt": "solve the quadratic equation x squared minus nine", "completion": "y" * 60, "pass_rate": 0.1},
            {"prompt": "count the ways to tile a two by ten board", "completion": "y" * 10, "pass_rate": 0.4}]
    kept, removed, report = _run(tmp_path, rows, n=2)
    # the two quadratics share 7 of 9 words (jaccard 0.78 >= 0.5): one cluster; its longest row goes first
    assert [(r["prompt"].split()[-1], r["select_rank"]) for r in kept] == [("nine", 1), ("board", 2)]
    assert report["groups"] == 2 and removed[0]["reason"].startswith("diversity: not among the n=2 selected (cluster 1")
    kept, _, report = _run(tmp_path, rows, n=2, cluster_threshold=0.8)  # below 0.78: three clusters
    assert report["groups"] == 3 and [r["prompt"].split()[-1] for r in kept] == ["four", "nine"]


def test_jaccard_clusters_hand_computed_and_against_brute_force():
    sets = [{"a", "b", "c", "d"}, {"a", "b", "c", "e"}, {"x", "y"}, {"a", "b", "c", "d", "e"}]
    assert jaccard_clusters(sets, 0.5) == [0, 0, 1, 0]  # J(s1, s0) = 3/5, J(s3, s0) = 4/5
    assert jaccard_clusters(sets, 0.7) == [0, 1, 2, 0]  # 3/5 < 0.7; s3 ties s0 and s1 at 4/5: the earliest
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(12)]
    for t in (0.3, 0.5, 0.75):
        data = [set(rng.sample(vocab, rng.randint(1, 6))) for _ in range(60)]
        leaders, want = [], []
        for s in data:  # brute force: compare with every leader
            best = max(((len(s & l) / len(s | l), -c) for c, l in enumerate(leaders)), default=(-1, 0))
            if best[0] >= t - 1e-12:
                want.append(-best[1])
            else:
                want.append(len(leaders))
                leaders.append(s)
        assert jaccard_clusters(data, t) == want


def test_s1_checker_compares_completion_to_answer(tmp_path):
    rows = [{"prompt": "2+2?", "completion": "so \\boxed{4}", "answer": "4"},
            {"prompt": "3+3?", "completion": "so \\boxed{7}", "answer": "6"},
            {"prompt": "1+1?", "completion": "I do not know", "answer": "2"}]
    kept, removed, _ = _run(tmp_path, rows, checker="numeric")
    assert [r["prompt"] for r in kept] == ["2+2?"]
    assert [r["reason"] for r in removed] == ["quality: checker numeric: completion's answer '7' != answer '6'",
                                              "quality: checker numeric: no final answer in the completion (answer '2')"]
    with pytest.raises(ConfigError, match="unknown data.checker 'nope'"):
        _run(tmp_path, rows, checker="nope")


def test_s1_bad_correct_value_is_a_data_error(tmp_path):
    rows = [_row("a", "A", 0.1, 5, correct="maybe")]
    with pytest.raises(DataError, match=r"in\.jsonl: line 1: field 'correct': expected true or false"):
        _run(tmp_path, rows)


# ---------------------------------------------------------------- LIMR
def _hist(rewards):
    """{prompt_id: [reward at step 1, 2, ...]} -> history records."""
    return [{"step": s, "prompt_id": pid, "where": "", "reward_mean": r, "admitted": True}
            for pid, rs in rewards.items() for s, r in enumerate(rs, start=1)]


HIST = _hist({0: [0.0, 0.5, 1.0], 1: [0.0, 0.0, 0.5], 2: [1.0, 1.0, 1.0]})
# average trajectory: 1/3, 1/2, 5/6; denominator (2/3)^2 + (1/2)^2 + (1/6)^2 = 26/36
# p0: (1/3)^2 + 0 + (1/6)^2 = 5/36 -> 21/26; p1: (1/3)^2 + (1/2)^2 + (1/3)^2 = 17/36 -> 9/26; p2: 26/36 -> 0
WANT = {0: 21 / 26, 1: 9 / 26, 2: 0.0}


def test_limr_scores_hand_computed():
    got = limr_scores(HIST)
    assert set(got) == {0, 1, 2}
    assert got == pytest.approx(WANT, abs=1e-12)


def test_limr_bins_average_steps():
    # steps 1..6 in 3 bins of 2 steps; each bin's mean equals HIST's step value
    pairs = {0: [0.0, 0.0, 0.25, 0.75, 1.0, 1.0], 1: [0.0, 0.0, 0.0, 0.0, 1.0, 0.0], 2: [1.0] * 6}
    assert limr_scores(_hist(pairs), bins=3) == pytest.approx(WANT, abs=1e-12)
    assert limr_scores(_hist(pairs))[1] != pytest.approx(WANT[1])  # per step it differs


def test_limr_prompt_sampled_at_some_steps_only():
    hist = [{"step": 1, "prompt_id": 0, "reward_mean": 0.0}, {"step": 1, "prompt_id": 1, "reward_mean": 0.5},
            {"step": 1, "prompt_id": 2, "reward_mean": 1.0}, {"step": 2, "prompt_id": 0, "reward_mean": 1.0},
            {"step": 2, "prompt_id": 2, "reward_mean": 1.0}, {"step": 2, "prompt_id": 3, "reward_mean": 1.0}]
    # step means 0.5 (p0 p1 p2), 1.0 (p0 p2 p3); sums over each prompt's own steps:
    # p0: (0.25 + 0) / (0.25 + 0) -> 0; p1: 0 / 0.25 -> 1; p2: 0.25 / 0.25 -> 0; p3: denominator 0 -> 0
    assert limr_scores(hist) == pytest.approx({0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0}, abs=1e-12)
    # two groups of one prompt at one step are averaged
    twice = hist + [{"step": 1, "prompt_id": 1, "reward_mean": 0.5}]
    assert limr_scores(twice) == pytest.approx(limr_scores(hist))


LIMR_ROWS = [{"prompt": f"p{i}", "answer": str(i)} for i in range(4)]


def _limr(tmp_path, hist, rows=LIMR_ROWS, **opts):
    h = _write(tmp_path / "prompt_rewards.jsonl", hist)
    return _run(tmp_path, rows, method="limr", history=str(h), **opts)


def test_limr_threshold_keeps_the_right_prompts(tmp_path):
    kept, removed, report = _limr(tmp_path, HIST, limr_threshold=0.3)
    assert [r["prompt"] for r in kept] == ["p0", "p1"]
    assert [r["limr_score"] for r in kept] == pytest.approx([21 / 26, 9 / 26])
    assert [r["select_rank"] for r in kept] == [1, 2]
    assert [(r["row"], r["reason"]) for r in removed] == [(3, "limr_score 0.0000 < limr_threshold 0.3"),
                                                          (4, "no reward history")]
    assert removed[0]["data"]["limr_score"] == 0.0 and "limr_score" not in removed[1]["data"]
    assert report["no_history"] == 1 and report["below_threshold"] == 1 and report["matched_by"] == "position"
    kept, removed, _ = _limr(tmp_path, HIST)  # LIMR's 0.6
    assert [r["prompt"] for r in kept] == ["p0"]
    kept, removed, _ = _limr(tmp_path, HIST, limr_threshold=0.3, n=1)
    assert [r["prompt"] for r in kept] == ["p0"]
    assert removed[0]["reason"] == "limr: beyond the n=1 best (limr_score 0.3462)"


def test_limr_id_column(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": "1", "uid": u} for i, u in enumerate(["c", "a", "b"])]
    hist = _hist({"a": [0.0, 0.5, 1.0], "b": [0.0, 0.0, 0.5], "c": [1.0, 1.0, 1.0]})
    kept, removed, report = _limr(tmp_path, hist, rows=rows, id_column="uid", limr_threshold=0.3)
    assert [(r["uid"], round(r["limr_score"], 6)) for r in kept] == [("a", round(21 / 26, 6)), ("b", round(9 / 26, 6))]
    assert report["matched_by"] == "id_column uid"


def test_limr_follows_the_lines_the_run_recorded(tmp_path):
    # the RL run skipped row 1 (say, too long): its prompt ids 0, 1, 2 are lines 2, 3, 4
    hist = [dict(r, where=f"train.jsonl: line {r['prompt_id'] + 2}") for r in HIST]
    kept, removed, report = _limr(tmp_path, hist, limr_threshold=0.3)
    assert [r["prompt"] for r in kept] == ["p1", "p2"]
    assert (removed[0]["row"], removed[0]["reason"]) == (1, "no reward history")
    assert report["matched_by"].startswith("recorded lines")


def test_limr_bad_history_line_names_file_and_line(tmp_path):
    h = tmp_path / "prompt_rewards.jsonl"
    f = _write(tmp_path / "in.jsonl", LIMR_ROWS)
    cfg = lambda: DataToolsConfig(cmd="select", out=str(tmp_path / "o"), data=DataIn(path=str(f)),  # noqa: E731
                                  select=SelectOptions(method="limr", history=str(h)))
    h.write_text(json.dumps(HIST[0]) + "\n" + '{"step": 2, "prompt_id": 0,' + "\n")
    with pytest.raises(DataError, match=r"prompt_rewards\.jsonl: line 2: not valid JSON"):
        select.run(cfg())
    h.write_text(json.dumps(HIST[0]) + "\n\n" + json.dumps({"step": 2, "prompt_id": 1}) + "\n")
    with pytest.raises(DataError, match=r"prompt_rewards\.jsonl: line 3: missing field 'reward_mean'"):
        select.run(cfg())
    h.write_text(json.dumps({"step": "two", "prompt_id": 1, "reward_mean": 0.5}) + "\n")
    with pytest.raises(DataError, match=r"line 1: field 'step': expected an integer, got 'two'"):
        select.run(cfg())
    assert not (tmp_path / "o").exists()  # nothing written


def test_limr_needs_a_history(tmp_path):
    with pytest.raises(ConfigError, match="needs --select.history"):
        _run(tmp_path, LIMR_ROWS, method="limr")


def test_cli_front_door(tmp_path):
    from posttrain.cli import main

    rows = [{"question": f"q{i}", "solution": str(i)} for i in range(4)]
    f = _write(tmp_path / "train.jsonl", rows)
    h = _write(tmp_path / "prompt_rewards.jsonl", HIST)
    d = tmp_path / "limr"
    assert main(["data", "select", "--data", str(f), "--data.columns", "question=prompt,solution=answer",
                 "--select.method", "limr", "--select.history", str(h), "--select.limr_threshold", "0.3",
                 "--out", str(d)]) == 0
    got = [json.loads(l) for l in open(d / "data.jsonl")]
    assert [{k: r[k] for k in ("question", "solution")} for r in got] == rows[:2]
    report = json.loads((d / "report.json").read_text())
    assert report["cmd"] == "select" and report["method"] == "limr" and report["kept"] == 2
    d2 = tmp_path / "s1"
    rated = [dict(r, pass_rate=p, type=t) for r, p, t in zip(rows, [0.5, 0.25, 0.9, 0.0], "ABAB")]
    f2 = _write(tmp_path / "rated.jsonl", rated)
    assert main(["data", "select", "--data", str(f2), "--data.columns", "question=prompt,solution=answer",
                 "--select.n", "2", "--select.diversity_column", "type", "--out", str(d2)]) == 0
    got = [json.loads(l) for l in open(d2 / "data.jsonl")]
    assert [(r["question"], r["select_rank"]) for r in got] == [("q0", 2), ("q1", 1)]
