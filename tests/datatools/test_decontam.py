"""`posttrain data decontaminate` and the overlap check of `posttrain eval`: planted test problems are
found (verbatim and lightly edited), disjoint rows are not, and the short-problem and template rules hold."""
import json
import random

import pytest

from posttrain.cli import main
from posttrain.datatools.decontam import NgramIndex, eval_overlap, find_run_folder, overlap

TEST = {  # GSM8K-style test problems (question, answer)
    "p1": ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
           "How many clips did Natalia sell altogether in April and May?", "72"),
    "p2": ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting and then "
           "went home to study for her exams with her brother. How much did she earn?", "10"),
    "p3": ("Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
           "Her parents decided to give her $15 for that purpose. How much more money does Betty need?", "5"),
    "p4": ("James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?", "624"),
}


def _edit_one_word(text: str, at: int, new: str) -> str:
    w = text.split()
    w[at] = new
    return " ".join(w)


def _random_text(rng, n=40):
    return " ".join("".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(n))


def _train_rows():
    rng = random.Random(1)
    p2 = TEST["p2"][0]
    rows = [
        {"question": TEST["p1"][0], "answer": "She sold 72. #### 72"},  # verbatim
        {"question": _edit_one_word(p2, 15, "hours"), "answer": "#### 10"},  # one word changed mid-problem
        {"question": TEST["p3"][0].upper().replace(".", " ;").replace("$", ""), "answer": "#### 5"},  # case, punctuation
        {"question": "Tom has 3 apples and buys 4 more apples at the market, how many apples does Tom have now?",
         "answer": "#### 7"},  # disjoint, same style
    ]
    rows += [{"question": _random_text(rng), "answer": "#### 1"} for _ in range(6)]  # disjoint
    return rows


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def gsm8k_root(tmp_path):
    """A data root laid out like ../shared/data: gsm8k/test.jsonl."""
    root = tmp_path / "root"
    _write(root / "gsm8k" / "test.jsonl", [{"question": q, "answer": f"step #### {a}"} for q, a in TEST.values()])
    return root


def test_overlap_finds_planted_rows_and_no_false_positives():
    rows = _train_rows()
    test = {k: [q, a] for k, (q, a) in TEST.items()}
    hits = overlap([[r["question"], r["answer"]] for r in rows], test, n=13)
    assert set(hits) == {0, 1, 2}
    assert [h.test_id for h in hits[0]] == ["p1"] and hits[0][0].coverage == 1.0
    assert [h.test_id for h in hits[1]] == ["p2"] and 0 < hits[1][0].coverage < 1
    assert [h.test_id for h in hits[2]] == ["p3"] and hits[2][0].coverage == 1.0
    assert len(hits[0][0].ngram.split()) == 13
    # min_coverage: the edited row shares only part of p2's 13-grams
    strict = overlap([[r["question"]] for r in rows], test, n=13, min_coverage=0.9)
    assert set(strict) == {0, 2}


def test_short_problems_matched_whole_from_min_n():
    test = {"short": "What is the sum of seven and eight here?",  # 9 words: matched whole
            "tiny": "Add two and three.",  # 4 words < min_n: never matched
            "long": TEST["p4"][0]}
    train = ["Warm-up. What is the SUM of seven and eight here? Then go on.",
             "What is the sum of seven and eight",  # a part of the short problem is not enough
             "first add two and three. then rest"]
    hits = overlap(train, test, n=13, min_n=8)
    assert set(hits) == {0} and hits[0][0].test_id == "short"
    assert hits[0][0].ngram == "what is the sum of seven and eight here"
    index = NgramIndex(test, n=13, min_n=8)
    assert index.too_short == ["tiny"]
    assert set(overlap(train, test, n=13, min_n=3)) == {0, 2}  # a lower floor matches "tiny" too


def test_template_ngrams_frequent_in_the_test_set_are_ignored():
    template = "Read the problem below carefully and write your final answer as a single number at the end."
    rng = random.Random(2)
    test = {f"t{i}": f"{template} {_random_text(rng, 20)}" for i in range(12)}
    train = [f"Instructions: {template}", "unrelated words " * 10, test["t5"].split(template)[1]]
    hits = overlap(train, test, n=13, max_freq=10)
    assert set(hits) == {2} and [h.test_id for h in hits[2]] == ["t5"]  # only the problem's own text counts
    hits = overlap(train, test, n=13, max_freq=12)  # now the template is not frequent enough to be ignored
    assert 0 in hits and len(hits[0]) == 12


def test_cli_benchmark_and_against(tmp_path, gsm8k_root):
    rows = _train_rows()
    f = _write(tmp_path / "train.jsonl", rows)
    out = tmp_path / "dc"
    rc = main(["data", "decontaminate", "--data", str(f), "--data.columns", "question=prompt", "--benchmark", "gsm8k",
               "--data.root", str(gsm8k_root), "--out", str(out)])
    assert rc == 0
    kept = [json.loads(x) for x in (out / "data.jsonl").read_text().splitlines()]
    assert kept == rows[3:]
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    assert [r["row"] for r in removed] == [1, 2, 3]
    assert removed[0]["reason"].startswith("overlaps gsm8k problem 1: 13-gram 'natalia sold clips")
    assert "gsm8k problem 2" in removed[1]["reason"] and "gsm8k problem 3" in removed[2]["reason"]
    report = json.loads((out / "report.json").read_text())
    b = report["benchmarks"]["gsm8k"]
    assert report["cmd"] == "decontaminate" and report["n"] == 13
    assert b["problems"] == 4 and b["rows_overlapping"] == 3 and b["problems_hit"] == 3
    assert b["problem_ids_hit"] == ["1", "2", "3"]

    # the same test set as a plain file through --decontam.against (every text column of its rows)
    against = _write(tmp_path / "mytest.jsonl", [{"q": q, "a": a} for q, a in TEST.values()])
    out2 = tmp_path / "dc2"
    assert main(["data", "decontaminate", "--data", str(f), "--data.columns", "question=prompt",
                 "--decontam.against", str(against), "--out", str(out2)]) == 0
    report = json.loads((out2 / "report.json").read_text())
    assert report["benchmarks"][str(against)]["rows_overlapping"] == 3
    assert report["kept"] == len(rows) - 3
    # only the answer field checked: nothing overlaps
    assert main(["data", "decontaminate", "--data", str(f), "--data.columns", "question=prompt", "--decontam.fields", "answer",
                 "--decontam.against", str(against), "--out", str(tmp_path / "dc3")]) == 0
    assert json.loads((tmp_path / "dc3" / "report.json").read_text())["removed"] == 0


def test_cli_generated_benchmark_and_errors(tmp_path, capsys):
    from posttrain.eval.benchmarks import load_benchmark

    probs = load_benchmark("task:addition").problems
    a = probs[0].prompt[0]["content"]  # "157+193": two words, matched whole with min_n 2
    f = _write(tmp_path / "t.jsonl", [{"prompt": f"Compute {a} please", "answer": "x"},
                                      {"prompt": "Compute 1+1 please", "answer": "2"}])
    out = tmp_path / "dc"
    assert main(["data", "decontaminate", "--data", str(f), "--benchmark", "task:addition", "--decontam.min_n", "2",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())["benchmarks"]["task:addition"]
    assert report["rows_overlapping"] == 1 and probs[0].id in report["problem_ids_hit"]
    # with the default floor (8 words) the 2-word problems are all too short to match
    assert main(["data", "decontaminate", "--data", str(f), "--benchmark", "task:addition", "--out", str(tmp_path / "d2")]) == 0
    report = json.loads((tmp_path / "d2" / "report.json").read_text())["benchmarks"]["task:addition"]
    assert report["rows_overlapping"] == 0 and report["too_short_problems"] == report["problems"]
    assert main(["data", "decontaminate", "--data", str(f), "--out", str(tmp_path / "d3")]) == 2
    assert "--benchmark" in capsys.readouterr().err


# ---------------------------------------------------------------- eval hygiene
def _run_folder(tmp_path, data_path, columns="question: prompt"):
    from posttrain.models import tiny_model

    run = tmp_path / "runs" / "sft1"
    ck = run / "checkpoints" / "step-0000002"
    model, tok = tiny_model(hidden_size=32, num_layers=1, num_heads=2)
    model.save_pretrained(ck)
    tok.save_pretrained(ck)
    (run / "config.yaml").write_text(f"# posttrain sft\ndata:\n  path: {data_path}\n  columns:\n    {columns}\n"
                                     "  train_rows: 100\ntrain:\n  out: runs/sft1\n")
    return run, ck


EVAL_ARGS = ["--benchmark", "gsm8k", "--sampling.n", "0", "--sampling.max_new_tokens", "2", "--train.progress", "false"]


def test_eval_records_overlap_with_the_runs_training_data(tmp_path, gsm8k_root, capsys):
    train = _write(tmp_path / "train.jsonl", _train_rows())
    run, ck = _run_folder(tmp_path, train)
    assert find_run_folder(str(ck)) == run.resolve() and find_run_folder(str(tmp_path / "nothing")) is None
    out = tmp_path / "ev"
    rc = main(["eval", "--model", str(ck), "--data.root", str(gsm8k_root), "--out", str(out), *EVAL_ARGS])
    assert rc == 0
    c = json.loads((out / "results.json").read_text())["contamination"]
    assert c["train_data"] == str(train) and c["n"] == 13
    assert c["overlapping_problems"] == 3 and c["ids"] == ["1", "2", "3"]
    said = capsys.readouterr()
    assert "3 of 4 gsm8k problems" in (said.out + said.err).replace("\n", " ")
    # switched off: nothing recorded
    assert main(["eval", "--model", str(ck), "--data.root", str(gsm8k_root), "--out", str(tmp_path / "ev2"),
                 "--train.check_overlap", "false", *EVAL_ARGS]) == 0
    assert "contamination" not in json.loads((tmp_path / "ev2" / "results.json").read_text())


def test_eval_overlap_never_crashes_on_unreadable_training_data(tmp_path, gsm8k_root):
    run, ck = _run_folder(tmp_path, tmp_path / "gone.jsonl")
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(ck), "--data.root", str(gsm8k_root), "--out", str(out), *EVAL_ARGS]) == 0
    c = json.loads((out / "results.json").read_text())["contamination"]
    assert c["train_data"] == str(tmp_path / "gone.jsonl") and "error" in c and "overlapping_problems" not in c
    # a model that is not inside a run folder: no check at all
    from posttrain.eval.benchmarks import load_benchmark

    assert eval_overlap("tiny-llama", load_benchmark("task:addition", limit=2)) is None
