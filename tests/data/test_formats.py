import json

import pytest

from posttrain.data import DataError, load_examples

U = lambda s: [{"role": "user", "content": s}]  # noqa: E731
A = lambda s: [{"role": "assistant", "content": s}]  # noqa: E731

ROWS = {
    "language_modeling": ({"text": "hello"}, {"messages": U("hi") + A("yo")}),
    "prompt_only": ({"prompt": "2+2="}, {"prompt": U("2+2")}),
    "prompt_completion": ({"prompt": "2+2=", "completion": "4"}, {"prompt": U("2+2"), "completion": A("4")}),
    "preference": (
        {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
        {"prompt": U("2+2"), "chosen": A("4"), "rejected": A("5")},
    ),
    "unpaired_preference": (
        {"prompt": "2+2=", "completion": "4", "label": True},
        {"prompt": U("2+2"), "completion": A("5"), "label": False},
    ),
    "stepwise": (
        {"prompt": "2+2*3", "completions": ["2*3=6", "2+6=8"], "labels": [True, False]},
        {"prompt": U("2+2*3"), "completions": ["2*3=6", "2+6=8"], "labels": [1.0, 0.25]},
    ),
    "verifiable": ({"prompt": "2+2=", "answer": "4"}, {"prompt": U("2+2"), "answer": 4}),
}


@pytest.mark.parametrize("kind", list(ROWS))
@pytest.mark.parametrize("style", [0, 1], ids=["standard", "conversational"])
def test_every_format_parses_and_is_detected(kind, style):
    (ex,), report = load_examples([ROWS[kind][style]])
    assert report.kind == kind and ex.kind == kind
    assert ex.conversational == bool(style) or kind == "stepwise" and ex.conversational == bool(style)
    if kind == "verifiable":
        assert ex.answer == "4"
    if kind == "stepwise":
        assert ex.steps == ["2*3=6", "2+6=8"] and len(ex.step_labels) == 2


def test_implicit_prompt_hh_style():
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello there",
        "rejected": "\n\nHuman: hi\n\nAssistant: go away",
    }
    (ex,), _ = load_examples([row])
    assert ex.prompt == "\n\nHuman: hi\n\nAssistant:"
    assert ex.chosen == " hello there" and ex.rejected == " go away"


def test_implicit_prompt_conversational():
    row = {"chosen": U("hi") + A("hello"), "rejected": U("hi") + A("bye")}
    (ex,), _ = load_examples([row])
    assert ex.prompt == U("hi") and ex.chosen == A("hello") and ex.rejected == A("bye")


def _write_all(tmp_path, rows):
    import datasets
    import pandas as pd

    paths = {}
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["jsonl"] = p
    p = tmp_path / "d.json"
    p.write_text(json.dumps(rows))
    paths["json"] = p
    p = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(p)
    paths["parquet"] = p
    p = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    paths["csv"] = p
    p = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(p))
    paths["folder"] = p
    paths["dataset"] = datasets.Dataset.from_list(rows)
    return paths


def test_sources_and_column_mapping(tmp_path):
    rows = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(4)]
    for name, src in _write_all(tmp_path, rows).items():
        exs, report = load_examples(src, columns={"question": "prompt"})
        assert [e.kind for e in exs] == ["verifiable"] * 4, name
        assert [e.answer for e in exs] == ["1", "2", "3", "4"], name
        assert exs[2].prompt == "2+1", name


def test_bad_row_names_file_row_and_field(tmp_path):
    p = tmp_path / "pairs.jsonl"
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    p.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + json.dumps({"prompt": "q", "chosen": "a", "rejected": ""}) + "\n")
    with pytest.raises(DataError, match=r"pairs\.jsonl: line 3: field 'rejected': empty string"):
        load_examples(p)


@pytest.mark.parametrize(
    "row, field, what",
    [
        ({"prompt": "q", "chosen": "a"}, "rejected", "missing"),
        ({"prompt": "q", "chosen": "a", "rejected": None}, "rejected", "missing"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "rejected", "identical"),
        ({"prompt": "q", "completion": "a", "label": "yes"}, "label", "expected a boolean"),
        ({"prompt": "q", "completions": ["a", "b"], "labels": [1]}, "labels", "1 labels for 2 steps"),
        ({"prompt": "q", "answer": ""}, "answer", "non-empty reference answer"),
        ({"prompt": [{"role": "bot", "content": "x"}], "answer": "1"}, "prompt", "role 'bot'"),
    ],
)
def test_bad_rows_raise_named_errors(row, field, what):
    kind = "preference" if "chosen" in row and "rejected" not in row else None
    good = {k: v for k, v in row.items()}
    with pytest.raises(DataError) as e:
        load_examples([good], kind=kind)
    msg = str(e.value)
    assert what in msg
    assert "rows[0]: field" in msg and f"'{field}'" in msg


def test_undetectable_columns_say_what_is_expected():
    with pytest.raises(DataError, match="cannot tell the dataset format.*column map"):
        load_examples([{"question": "q", "solution": "s"}])


def test_skip_mode_counts_bad_rows(tmp_path):
    rows = [{"prompt": "q", "completion": "a", "label": True}, {"prompt": "q", "completion": "a", "label": "no"},
            {"prompt": "q", "completion": "a", "label": 1}, {"prompt": "q", "completion": "b", "label": False}]
    exs, report = load_examples(rows, on_error="skip")
    assert len(exs) == 2 and report.rows == 4 and sum(report.skipped.values()) == 2
    assert report.first_errors[0].startswith("rows[1]: field 'label'") and report.first_errors[1].startswith("rows[2]: ")
    assert set(report.skipped) == {"field 'label': expected a boolean"}
    assert "skipped 2" in report.summary()


def test_invalid_json_line_is_named(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"x\.jsonl: line 2: not valid JSON"):
        load_examples(p)
