"""`posttrain data passrate`: exact pass rates on a deterministic toy policy, resume, the CLI."""
import json
import re

import pytest

from posttrain.cli import main
from posttrain.rollout.base import Completion

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyPolicy:
    """Prompt "q N ..." gets k completions of which the first N (capped at k) answer the gold 7, the
    rest answer 8; completion j has j + 2 tokens. Deterministic, so pass rates are known exactly."""

    def __init__(self, model=None, tokenizer=None, fail_after=None, **_):
        self.tok, self.calls, self.fail_after, self.seen = tokenizer, 0, fail_after, []

    def generate(self, prompts, params):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        out = []
        for p in prompts:
            text = self.tok.decode(p)
            self.seen.append(text)
            good = int(re.search(r"q (\d+)", text).group(1))
            out.append([Completion([1] * (j + 2), [0.0] * (j + 2), "stop", "\\boxed{7}" if j < good else "\\boxed{8}")
                        for j in range(params.n)])
        return out

    def update_weights(self, named_weights, version):
        pass


class Made(list):
    fail_after = None  # engines made from now on raise KeyboardInterrupt after this many generate calls


@pytest.fixture
def toy(monkeypatch):
    made = Made()

    def make(*a, **k):
        made.append(ToyPolicy(*a, fail_after=made.fail_after, **k))
        return made[-1]

    monkeypatch.setattr("posttrain.eval.harness.HFEngine", make)
    return made


GOOD = [0, 1, 2, 3, 4, 4, 2]  # correct completions out of k=4 per prompt


def _rows(path):
    path.write_text("".join(json.dumps({"question": f"q {g} what is 3+4?", "solution": "7", "src": i}) + "\n"
                            for i, g in enumerate(GOOD)))
    return str(path)


ARGS = ["--model", "tiny-llama:d=32,l=2,h=2", "--data.columns", "question=prompt,solution=answer", "--passrate.k", "4",
        "--passrate.prompts_per_batch", "3", "--passrate.max_new_tokens", "8", "--progress", "false"]


def _read(path):
    return [json.loads(l) for l in open(path)]


def test_pass_rates_are_exact_and_rows_keep_their_columns(tmp_path, toy):
    f = _rows(tmp_path / "rows.jsonl")
    assert main(["data", "passrate", "--data", f, "--out", str(tmp_path / "pr"), *ARGS]) == 0
    rows = _read(tmp_path / "pr" / "data.jsonl")
    assert [r["pass_rate"] for r in rows] == [g / 4 for g in GOOD]
    assert [r["src"] for r in rows] == list(range(len(GOOD)))  # order and source columns kept
    assert set(rows[0]) == {"question", "solution", "src", "pass_rate", "mean_length"}
    assert all(r["mean_length"] == (2 + 3 + 4 + 5) / 4 for r in rows)
    rep = json.loads((tmp_path / "pr" / "report.json").read_text())
    assert rep["pass_rate_counts"] == {"0": 1, "between": 4, "1": 2}
    assert rep["mean_pass_rate"] == pytest.approx(sum(GOOD) / 4 / len(GOOD))
    assert "q 3 what is 3+4?" in toy[0].seen  # the prompt is sent as it is (no chat wrapping by default)


def test_a_stopped_run_resumes_to_the_same_columns(tmp_path, toy):
    f = _rows(tmp_path / "rows.jsonl")
    toy.fail_after = 1  # the second batch of 3 prompts is interrupted
    assert main(["data", "passrate", "--data", f, "--out", str(tmp_path / "pr"), *ARGS]) == 130
    assert len(_read(tmp_path / "pr" / "samples.jsonl")) == 3
    toy.fail_after = None
    assert main(["data", "passrate", "--data", f, "--out", str(tmp_path / "pr"), *ARGS]) == 0
    assert len(toy[-1].seen) == len(GOOD) - 3  # only the missing prompts are sampled
    assert [r["pass_rate"] for r in _read(tmp_path / "pr" / "data.jsonl")] == [g / 4 for g in GOOD]
    # other settings: refused, not mixed into the recorded samples
    assert main(["data", "passrate", "--data", f, "--out", str(tmp_path / "pr"), *ARGS, "--passrate.k", "2"]) == 2


def test_bad_rows_and_outputs_are_named(tmp_path, toy, capsys):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"question": "q 1", "solution": "7"}) + "\n" + json.dumps({"question": "q 2", "solution": ""}) + "\n")
    assert main(["data", "passrate", "--data", str(f), "--out", str(tmp_path / "pr"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "rows.jsonl: line 2" in err and "answer" in err
    assert not (tmp_path / "pr" / "data.jsonl").exists()
    assert main(["data", "--data", str(f), "--out", str(tmp_path / "x")]) == 2
    assert "sub-command" in capsys.readouterr().err


def test_task_data_uses_the_task_verifier_on_a_real_model(tmp_path):
    out = tmp_path / "pr"
    assert main(["data", "passrate", "--data", "task:addition", "--data.limit", "3", "--model", "tiny-llama:d=32,l=2,h=2",
                 "--passrate.k", "2", "--passrate.max_new_tokens", "4", "--progress", "false", "--out", str(out)]) == 0
    rows = _read(out / "data.jsonl")
    assert len(rows) == 3 and all(r["pass_rate"] in (0.0, 0.5, 1.0) for r in rows)
    assert json.loads((out / "report.json").read_text())["checker"] == "task:addition"
