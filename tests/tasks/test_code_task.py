"""The built-in code task: deterministic rows, a held-out split disjoint by function, HumanEval-style
tests that the reference passes and a near miss fails, run in the sandbox."""
import json
import pytest

from posttrain.config import ConfigError
from posttrain.tasks import load_task_spec
from posttrain.tasks.code import program


def _prompt(row):
    return row["prompt"][0]["content"]


def _completion(row):
    return row["completion"][0]["content"]


def test_rows_are_deterministic_short_and_carry_humaneval_columns():
    task = load_task_spec("code")
    rows = task.sft_rows(300)
    assert rows == task.sft_rows(300)
    assert rows != task.sft_rows(300, seed=5)
    for r in rows:
        assert len(_completion(r)) <= 60 and _completion(r).startswith("def f(x): return ")
        assert r["entry_point"] == "f" and r["test"] == r["answer"] and r["test"].startswith("def check(candidate):\n")
        assert r["test"].count("assert candidate(") == 4
    r = task.eval_rows(1)[0]
    assert set(r) == {"prompt", "answer", "test", "entry_point", "input_output"}
    io = json.loads(r["input_output"])  # the same cases, call-based
    assert io["fn_name"] == "f" and len(io["inputs"]) == 4
    assert all(f"assert candidate({x}) == {y}" in r["test"] for (x,), y in zip(io["inputs"], io["outputs"]))


def test_prompt_values_and_tests_follow_the_reference_function():
    task = load_task_spec("code:level=3,shown=4,tests=6")
    for r in task.sft_rows(200):
        expr = _completion(r).removeprefix("def f(x): return ")
        f = eval(f"lambda x: {expr}")  # the task's own generated expression, not model text
        assert _prompt(r) == " ".join(f"f({x})={f(x)}" for x in range(4))
        cases = [line.strip() for line in r["test"].splitlines()[1:]]
        assert len(cases) == 6
        for line in cases:  # "assert candidate(X) == Y", X not shown in the prompt
            x, y = line.removeprefix("assert candidate(").split(") == ")
            assert not 0 <= int(x) < 4 and f(int(x)) == int(y)


def test_held_out_functions_are_never_trained_on():
    task = load_task_spec("code")
    train = {_prompt(r) for r in task.sft_rows(5000)} | {_prompt(r) for r in task.rl_rows(5000)}
    held = [_prompt(r) for r in task.eval_rows(200)]
    assert not train & set(held)
    assert len(set(held)) == len(task._split(held_out=True)) < 200  # every held-out function before any repeats
    assert len(set(held[: len(set(held))])) == len(set(held))
    assert held == [_prompt(r) for r in task.eval_rows(200)]
    big = load_task_spec("code:max_const=40")
    assert len({_prompt(r) for r in big.eval_rows(200)}) == 200


def test_reference_passes_its_tests_in_the_sandbox_and_a_near_miss_fails():
    task = load_task_spec("code:level=3")
    rows = task.preference_rows(6, seed=1)
    for r in rows:
        good, bad = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert task.verify(good, r["answer"]), (good, r["test"])
        assert not task.verify(bad, r["answer"]), (bad, r["test"])
    r = rows[0]
    good = r["chosen"][0]["content"]
    assert task.verify(f"Here it is:\n```python\n{good.replace('return ', 'return (') + ')'}\n```", r["answer"])  # equivalent
    assert not task.verify("def f(x): return x", r["answer"])
    assert not task.verify("no program here", r["answer"]) and task.extract("no program here") is None
    # a program that only knows the shown values fails the held-out inputs
    shown = dict(tuple(map(int, kv.removeprefix("f(").split(")="))) for kv in _prompt(r).split())
    assert not task.verify(f"def f(x): return {shown}[x]", r["answer"])


def test_options_are_checked():
    assert program("x*2") == "def f(x): return x*2"
    for spec, msg in (("code:level=4", "level"), ("code:shown=2", "shown"), ("code:max_const=1", "max_const"),
                      ("code:tests=0", "tests")):
        with pytest.raises(ConfigError, match=msg):
            load_task_spec(spec)
