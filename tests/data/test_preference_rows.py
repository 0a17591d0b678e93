"""Bad preference rows give a named error (file, line, field) or are skipped and counted; task-generated
pairs are right vs plausibly wrong; HH-RLHF's implicit prompts split at the last assistant turn."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.data import DataError, load_examples
from posttrain.tasks import get_task

GOOD = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
HH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf" / "helpful-base-test.jsonl.gz"  # ../shared beside the repo


def write(tmp_path, rows) -> Path:
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "bad, field, reason",
    [
        ({"prompt": "2+2=", "chosen": "4", "rejected": ""}, "rejected", "empty string"),
        ({"prompt": "2+2=", "chosen": "4", "rejected": None}, "rejected", "missing"),
        ({"prompt": "2+2=", "chosen": "4", "rejected": []}, "rejected", "empty list"),
        ({"prompt": "2+2=", "chosen": "4", "rejected": "4"}, "rejected", "identical to 'chosen'"),
    ],
)
def test_bad_pair_names_file_line_and_field(tmp_path, bad, field, reason):
    path = write(tmp_path, [GOOD, bad, GOOD])
    with pytest.raises(DataError) as e:
        load_examples(path, kind="preference")
    assert f"{path}: line 2: field '{field}'" in str(e.value)
    assert reason in str(e.value)


def test_missing_rejected_column_in_a_preference_file(tmp_path):
    path = write(tmp_path, [GOOD, {"prompt": "1+1=", "chosen": "2"}])
    with pytest.raises(DataError, match=r"prefs.jsonl: line 2: field 'rejected': missing"):
        load_examples(path, kind="preference")


@pytest.mark.parametrize("label", ["yes", 1, None, "true"])
def test_non_boolean_kto_label(tmp_path, label):
    rows = [{"prompt": "a", "completion": "b", "label": True}, {"prompt": "a", "completion": "c", "label": label}]
    path = write(tmp_path, rows)
    with pytest.raises(DataError, match=r"prefs.jsonl: line 2: field 'label': expected a boolean"):
        load_examples(path, kind="unpaired_preference")


def test_skip_mode_counts_each_reason(tmp_path):
    rows = [GOOD, {**GOOD, "rejected": ""}, {**GOOD, "rejected": "4"}, {**GOOD, "rejected": ""}, {"prompt": "x", "chosen": "y"}]
    examples, report = load_examples(write(tmp_path, rows), kind="preference", on_error="skip")
    assert len(examples) == 1 and report.kept == 1 and report.rows == 5
    assert sum(report.skipped.values()) == 4
    assert report.skipped["field 'rejected': empty string"] == 2
    assert any("identical" in k for k in report.skipped)
    assert "skipped 4" in report.summary()


def test_skip_mode_with_no_good_row_still_fails(tmp_path):
    with pytest.raises(DataError, match="no usable rows"):
        load_examples(write(tmp_path, [{**GOOD, "rejected": "4"}]), kind="preference", on_error="skip")


@pytest.mark.parametrize("spec", [{"name": "addition"}, {"name": "addition", "scratchpad": 1}, {"name": "countdown"}])
def test_task_pairs_are_right_vs_wrong(spec):
    task = get_task(**spec)
    rows = task.preference_rows(300)
    examples, report = load_examples(rows, kind="preference")
    assert report.kept == 300
    for r in rows:
        assert task.verify(r["chosen"][0]["content"], r["answer"])
        assert not task.verify(r["rejected"][0]["content"], r["answer"])
    held = task.preference_rows(50, held_out=True)
    assert not {json.dumps(r["prompt"]) for r in held} & {json.dumps(r["prompt"]) for r in rows}


def test_addition_rejections_are_plausible():
    rows = get_task("addition").preference_rows(500)
    for r in rows:
        right, wrong = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert wrong.isdigit() and abs(len(wrong) - len(right)) <= 1  # a number of about the same size
    # on scratchpads the slip sits in one column and the answer line follows from it
    pad = get_task("addition", scratchpad=1).preference_rows(200)
    for r in pad:
        c, w = r["chosen"][0]["content"].splitlines(), r["rejected"][0]["content"].splitlines()
        assert len(c) == len(w) and sum(a != b for a, b in zip(c[:-1], w[:-1])) >= 1


def test_task_pairs_are_deterministic():
    task = get_task("countdown")
    assert task.preference_rows(20, seed=5) == task.preference_rows(20, seed=5)
    assert task.preference_rows(20, seed=5) != task.preference_rows(20, seed=6)


@pytest.mark.skipif(not HH.exists(), reason="HH-RLHF files not present")
def test_hh_rlhf_implicit_prompt_splits_at_the_last_assistant_turn():
    examples, report = load_examples(str(HH), limit=50, on_error="skip")
    assert report.kind == "preference" and len(examples) >= 45
    for ex in examples:
        assert ex.prompt.endswith("\n\nAssistant:")
        assert "\n\nAssistant:" not in ex.chosen and "\n\nAssistant:" not in ex.rejected
        assert ex.chosen != ex.rejected
