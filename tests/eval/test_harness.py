"""The eval harness on a scripted engine (exact metric values, bad input, resume) and one tiny real run."""
import json
import re

import pytest

from posttrain.data import DataError
from posttrain.eval.benchmarks import get_benchmark, load_benchmark, resolve_data_root
from posttrain.eval.harness import EvalSampling, evaluate, markdown_table
from posttrain.models import build_char_tokenizer
from posttrain.rollout.base import Completion


class ScriptedEngine:
    """Addition prompts 'a+b': greedy is right when a is even, else unparseable; samples j=0,1 are
    right, j=2 is off by one, j=3 is unparseable. `fail_after` calls raise (a crash mid-run)."""

    def __init__(self, tok, fail_after=None):
        self.tok, self.fail_after, self.calls, self.prompts_seen = tok, fail_after, 0, 0

    def generate(self, prompts, params):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.prompts_seen += len(prompts)
        out = []
        for ids in prompts:
            a, b = map(int, re.search(r"(\d+)\+(\d+)", self.tok.decode(ids)).groups())
            if params.temperature == 0:
                texts = [f"#### {a + b}" if a % 2 == 0 else "no idea"]
            else:
                texts = [[f"#### {a + b}", f"{a + b}", f"#### {a + b + 1}", "hmm"][j % 4] for j in range(params.n)]
            out.append([Completion(self.tok.encode(t), [0.0] * len(t), "stop", t) for t in texts])
        return out

    def update_weights(self, named_weights, version):
        pass


@pytest.fixture
def addition():
    return load_benchmark("task:addition", limit=10)


def test_metrics_exact_on_scripted_engine(tmp_path, addition):
    tok = build_char_tokenizer()
    s = EvalSampling(n=4, ks=(1, 4, 8), problems_per_batch=3)
    res = evaluate(None, tok, addition, s, tmp_path, engine=ScriptedEngine(tok), progress=False)
    m = res["metrics"]
    evens = sum(int(re.search(r"(\d+)\+", p.prompt[0]["content"]).group(1)) % 2 == 0 for p in addition.problems)
    assert m["num_problems"] == 10
    assert m["greedy_acc"] == pytest.approx(evens / 10)
    assert m["pass@1"] == pytest.approx(0.5) and m["pass@4"] == pytest.approx(1.0)
    assert m["mean@4"] == pytest.approx(0.5) and m["maj@4"] == pytest.approx(1.0) and m["maj@1"] == pytest.approx(1.0)
    assert "pass@8" not in m  # k > n dropped
    assert m["no_answer"] == (10 - evens) + 10  # unparseable answers are counted and scored wrong
    assert m["completions"] == 50
    files = {p.name for p in tmp_path.iterdir()}
    assert {"results.json", "results.md", "samples.jsonl", "settings.json"} <= files
    assert json.loads((tmp_path / "results.json").read_text())["sampling"]["temperature"] == s.temperature
    assert "| task:addition |" in markdown_table([res])


def test_resume_after_crash_equals_straight_run(tmp_path, addition):
    tok = build_char_tokenizer()
    s = EvalSampling(n=4, ks=(1, 4), problems_per_batch=4)
    straight = evaluate(None, tok, addition, s, tmp_path / "a", engine=ScriptedEngine(tok), progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(None, tok, addition, s, tmp_path / "b", engine=ScriptedEngine(tok, fail_after=2), progress=False)
    assert len((tmp_path / "b" / "samples.jsonl").read_text().splitlines()) == 4  # first batch kept
    with open(tmp_path / "b" / "samples.jsonl", "a") as f:
        f.write('{"id": "torn')  # a torn last line from the crash is ignored
    engine = ScriptedEngine(tok)
    resumed = evaluate(None, tok, addition, s, tmp_path / "b", engine=engine, progress=False)
    assert engine.prompts_seen == 2 * 6  # only the 6 missing problems, greedy + sampled
    assert resumed["metrics"]["pass@4"] == straight["metrics"]["pass@4"]
    assert resumed["metrics"]["greedy_acc"] == straight["metrics"]["greedy_acc"]
    with pytest.raises(ValueError, match="recorded settings differ"):
        evaluate(None, tok, addition, EvalSampling(n=2, ks=(1,)), tmp_path / "b", engine=ScriptedEngine(tok), progress=False)


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_row_without_answer_is_named_error_or_counted_skip(tmp_path):
    _write(tmp_path / "gsm8k" / "test.jsonl", [
        {"question": "1+1?", "answer": "so #### 2"}, {"question": "2+2?"}, {"question": "3+3?", "answer": "six"}])
    with pytest.raises(DataError, match=r"test\.jsonl: line 2: field 'answer'"):
        load_benchmark("gsm8k", data_root=str(tmp_path))
    loaded = load_benchmark("gsm8k", data_root=str(tmp_path), on_error="skip")
    assert [p.gold for p in loaded.problems] == ["2"] and loaded.skipped == 2
    assert "line 3" in loaded.first_errors[1] and "####" in loaded.first_errors[1]


def test_data_root_resolution_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.delenv("POSTTRAIN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root() == tmp_path / ".." / "shared" / "data"
    monkeypatch.setenv("POSTTRAIN_DATA", str(tmp_path / "d"))
    assert resolve_data_root() == tmp_path / "d" and resolve_data_root("x") == resolve_data_root("x")
    with pytest.raises(DataError, match=r"math500.*not found.*--data\.root.*POSTTRAIN_DATA"):
        load_benchmark("math500")
    _write(tmp_path / "d" / "math" / "math500.jsonl", [{"problem": "1/2+1/2?", "answer": "1"}])
    (p,) = load_benchmark("math500").problems
    assert p.gold == "1" and "\\boxed{}" in p.prompt[0]["content"]


def test_benchmark_checkers():
    math = get_benchmark("math500")
    assert math.match(math.extract("so the answer is \\boxed{\\frac{1}{2}}"), "0.5")
    assert math.extract("no digits here") is None
    cd = get_benchmark("countdown")
    assert cd.match(cd.extract("<answer>(3+5)*2</answer>"), "16|2 3 5")
    assert not cd.match("3+5+2", "16|2 3 5")
    add = get_benchmark("addition:scratchpad=1")
    assert add.match(add.extract("1+2+0=3 c0\n#### 3"), "3") and add.extract("??") is None
    with pytest.raises(KeyError, match="unknown benchmark"):
        get_benchmark("gsm9k")


def test_cli_eval_end_to_end_tiny_model(tmp_path):
    from posttrain.cli import main

    rc = main(["eval", "--benchmark", "task:addition", "--model", "tiny-llama:d=32,l=1,h=2", "--data.limit", "3",
               "--sampling.n", "2", "--sampling.ks", "1,2", "--sampling.max_new_tokens", "6", "--out", str(tmp_path),
               "--train.progress", "false"])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["metrics"]["num_problems"] == 3 and res["metrics"]["completions"] == 9
    assert 0 < res["metrics"]["avg_tokens"] <= 6
