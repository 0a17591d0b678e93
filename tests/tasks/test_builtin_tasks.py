import pytest

from posttrain.tasks import load_task_spec
from posttrain.tasks.arithmetic import scratchpad_steps


def _problem(row):
    return row["prompt"][0]["content"]


@pytest.mark.parametrize("scratchpad", [0, 1, 2])
def test_addition_completions_are_right_and_verified(scratchpad):
    task = load_task_spec(f"addition:scratchpad={scratchpad}")
    for row in task.sft_rows(50):
        a, b = map(int, _problem(row).split("+"))
        text = row["completion"][0]["content"]
        assert row["answer"] == str(a + b)
        assert task.verify(text, row["answer"])
        assert not task.verify(text.replace(f"#### {a + b}", f"#### {a + b + 1}") if scratchpad else str(a + b + 1), row["answer"])


def test_scratchpad_running_result_lines():
    task = load_task_spec("addition:scratchpad=2")
    text = task.completion(964, 494)
    assert text.split("\n") == ["4+4+0=8 c0 -> 8", "6+9+0=5 c1 -> 58", "9+4+1=4 c1 -> 1458", "#### 1458"]


def test_shuffled_scratchpad_varies_the_addend_order_only():
    task = load_task_spec("addition:scratchpad=2,shuffle=1")
    texts = [r["completion"][0]["content"] for r in task.sft_rows(400)]
    lines = [line for t in texts for line in t.split("\n")[:-1]]
    assert len({line.split("=")[0].split("+")[0] for line in lines}) > 1  # not always the first operand first
    for r, t in zip(task.sft_rows(400), texts):
        a, b = map(int, r["prompt"][0]["content"].split("+"))
        plain = scratchpad_steps(a, b, running=True)
        assert t.split("\n")[-1] == plain[-1] == f"#### {a + b}" and task.verify(t, r["answer"])
        for got, want in zip(t.split("\n")[:-1], plain[:-1]):
            (g_terms, g_rest), (w_terms, w_rest) = got.split("="), want.split("=")
            assert sorted(g_terms.split("+")) == sorted(w_terms.split("+")) and g_rest == w_rest
    assert texts == [r["completion"][0]["content"] for r in task.sft_rows(400)]  # deterministic
    with pytest.raises(ValueError, match="needs a scratchpad"):
        load_task_spec("addition:shuffle=1")


def test_held_out_split_is_disjoint_and_deterministic():
    task = load_task_spec("addition")
    train = {_problem(r) for r in task.sft_rows(3000)}
    held = [_problem(r) for r in task.eval_rows(300)]
    assert not train & set(held)
    assert held == [_problem(r) for r in task.eval_rows(300)]


def test_countdown_solutions_verify_and_wrong_ones_do_not():
    task = load_task_spec("countdown")
    for row in task.sft_rows(40):
        eq = row["completion"][0]["content"]
        assert task.verify(eq, row["answer"]), (eq, row["answer"])
        assert not task.verify(eq + "+1", row["answer"])
        assert sorted(row["nums"]) == sorted(int(x) for x in row["answer"].split("|")[1].split())
