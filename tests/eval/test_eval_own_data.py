"""`posttrain eval` on your own data (column map, chosen checker, template) and the prompt-length bound."""
import json
import subprocess
import sys
import time

import pytest

from posttrain.cli import main
from posttrain.data import DataError
from posttrain.eval.benchmarks import get_checker, load_benchmark
from posttrain.eval.harness import EvalSampling, bound_prompt, evaluate
from posttrain.models import build_char_tokenizer
from posttrain.rollout.base import Completion


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class FixedEngine:
    """Answers every prompt with the same text; records the decoded prompts it was given."""
    text = "so the answer is \\boxed{0.5}"

    def __init__(self, model=None, tokenizer=None, **_):
        self.tok, self.prompts = tokenizer, []

    def generate(self, prompts, params):
        self.prompts += [self.tok.decode(p) for p in prompts]
        t = self.text
        return [[Completion(list(range(3)), [0.0] * 3, "stop", t) for _ in range(params.n)] for _ in prompts]

    def update_weights(self, named_weights, version):
        pass


@pytest.fixture
def fixed_engine(monkeypatch):
    engines = []

    def make(*a, **k):
        engines.append(FixedEngine(*a, **k))
        return engines[-1]

    monkeypatch.setattr("posttrain.eval.harness.HFEngine", make)
    return engines


ROWS = [{"question": "half of 1?", "gold": "1/2"}, {"question": "1/2 as a decimal?", "gold": "0.5"},
        {"question": "two quarters?", "gold": "\\frac{2}{4}"}, {"question": "1/2 as a power?", "gold": "2^{-1}"}]
ARGS = ["--model", "tiny-llama", "--data.columns", "question=prompt,gold=answer", "--sampling.n", "1",
        "--sampling.ks", "1", "--sampling.max_new_tokens", "4", "--train.progress", "false"]


@pytest.mark.parametrize("checker, correct", [("exact", [False, True, False, False]),
                                              ("numeric", [True, True, True, False]),
                                              ("math", [True, True, True, True])])
def test_own_data_through_the_cli_uses_the_chosen_checker(tmp_path, fixed_engine, checker, correct):
    path = _write(tmp_path / "rows.jsonl", ROWS)
    out = tmp_path / checker
    rc = main(["eval", "--data.path", path, "--data.checker", checker, "--data.template", "Q: {prompt}\nA:",
               "--out", str(out), *ARGS])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["benchmark"] == "file:rows.jsonl" and res["data"]["checker"] == checker
    assert res["data"]["columns"] == {"question": "prompt", "gold": "answer"}
    assert res["metrics"]["num_problems"] == 4 and res["metrics"]["skipped_long_prompts"] == 0
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["greedy"]["correct"] for r in recs] == correct
    assert res["metrics"]["greedy_acc"] == pytest.approx(sum(correct) / 4)
    assert fixed_engine[0].prompts[0].endswith("Q: half of 1?\nA:")  # the template, no chat template on text


def test_changing_the_checker_does_not_resume_into_the_old_run(tmp_path, fixed_engine):
    path = _write(tmp_path / "rows.jsonl", ROWS)
    assert main(["eval", "--data.path", path, "--data.checker", "exact", "--out", str(tmp_path / "o"), *ARGS]) == 0
    assert main(["eval", "--data.path", path, "--data.checker", "math", "--out", str(tmp_path / "o"), *ARGS]) == 2


def test_bad_column_map_and_missing_field_are_named(tmp_path, fixed_engine, capsys):
    path = _write(tmp_path / "rows.jsonl", ROWS + [{"question": "no gold here"}])
    rc = main(["eval", "--data.path", path, "--data.columns", "questoin=prompt,gold=answer", "--out", str(tmp_path / "a"), *ARGS[4:]])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "rows.jsonl: line 1: field 'questoin': no such column" in err and "question" in err
    rc = main(["eval", "--data.path", path, "--data.checker", "exact", "--out", str(tmp_path / "b"), *ARGS])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "rows.jsonl: line 5: field 'gold': missing" in err
    rc = main(["eval", "--data.path", path, "--data.template", "no placeholder", "--out", str(tmp_path / "c"), *ARGS])
    assert rc == 2 and "{prompt}" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"line 1: field 'prompt': missing"):
        load_benchmark("file", path, columns={"gold": "answer"})
    loaded = load_benchmark("file", path, columns={"question": "prompt", "gold": "answer"}, on_error="skip")
    assert len(loaded.problems) == 4 and loaded.skipped == 1


def test_checkers():
    extract, match = get_checker("exact")
    assert match(extract("I think \\boxed{Paris}."), "paris") and not match(extract("\\boxed{1/2}"), "0.5")
    extract, match = get_checker("numeric")
    assert match(extract("#### 1,000"), "1000") and not match(extract("x = 3"), "4")
    extract, match = get_checker("task:addition")
    assert match(extract("579"), "579")
    from posttrain.config import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'exact'"):
        get_checker("exakt")


def test_truncate_keeps_the_end_without_tokenizing_the_whole_prompt():
    tok = build_char_tokenizer()
    huge = "x" * 5_000_000 + " what is 2+3?"
    t0 = time.perf_counter()
    assert bound_prompt(tok, huge, 64, "skip") == (None, False)
    ids, cut = bound_prompt(tok, [{"role": "user", "content": huge}], 64, "truncate")
    assert time.perf_counter() - t0 < 2.0
    text = tok.decode(ids)
    assert cut and len(ids) == 64 and text.startswith("<|user|>x")  # the chat template survives the cut
    assert text.endswith(" what is 2+3?<|assistant|>")  # the end of the problem is kept, generation prompt too
    ids, cut = bound_prompt(tok, huge, 64, "truncate")
    assert cut and len(ids) <= 64 and tok.decode(ids).endswith(" what is 2+3?")
    short = [{"role": "user", "content": "1+1"}]
    assert bound_prompt(tok, short, 64, "truncate") == (bound_prompt(tok, short, 0)[0], False)


def test_truncated_prompts_are_counted(tmp_path):
    tok = build_char_tokenizer()
    path = _write(tmp_path / "rows.jsonl", [{"prompt": "1+1=" + "y" * 500, "answer": "2"}, {"prompt": "2+2=", "answer": "4"}])
    loaded = load_benchmark("file", path, checker="exact")
    engine = FixedEngine(tokenizer=tok)
    res = evaluate(None, tok, loaded, EvalSampling(n=1, ks=(1,)), tmp_path / "o", engine=engine, progress=False,
                   max_prompt_tokens=100, on_long="truncate")
    assert res["metrics"]["truncated_prompts"] == 1 and res["metrics"]["num_problems"] == 2
    res = evaluate(None, tok, loaded, EvalSampling(n=1, ks=(1,)), tmp_path / "p", engine=engine, progress=False,
                   max_prompt_tokens=100)
    assert res["metrics"]["skipped_long_prompts"] == 1 and res["metrics"]["num_problems"] == 1
    assert res["skipped_long_prompts"] == ["1"] and res["data"]["max_prompt_tokens"] == 100


def test_a_5mb_problem_is_skipped_in_bounded_memory(tmp_path):
    rows = [{"question": f"{i}+1=", "gold": str(i + 1)} for i in range(3)]
    rows.insert(1, {"question": "9" * 5_000_000 + "+1=", "gold": "1"})
    path = _write(tmp_path / "big.jsonl", rows)
    out = tmp_path / "out"
    code = ("import resource, sys; from posttrain.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "eval", "--data.path", path, "--data.checker", "exact",
                           "--out", str(out), *ARGS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = int(proc.stdout.rsplit("MAXRSS_KB", 1)[1].split()[0]) / 1024
    assert peak_mb < 2048, f"peak RSS {peak_mb:.0f} MB"  # tokenizing the 5 MB prompt alone adds ~1.9 GB
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["skipped_long_prompts"] == 1 and res["metrics"]["num_problems"] == 3
    assert res["skipped_long_prompts"] == ["2"]  # the jsonl line of the 5 MB problem
    assert "skipped 1 of 4 problems" in " ".join(proc.stdout.split() + proc.stderr.split())
