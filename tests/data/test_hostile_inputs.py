"""Hostile data input gives one clear `DataError` naming the file, the row (the line for jsonl) and
the field — or, with on_error="skip", a counted skip — both from the library and through the CLI
(one stderr line, exit status 2, no traceback). SFT refuses rows with nothing to learn."""
from __future__ import annotations

import gzip
import json
import random

import pytest

from posttrain.cli import main
from posttrain.data import DataError, load_examples

U = lambda s: [{"role": "user", "content": s}]  # noqa: E731
A = lambda s: [{"role": "assistant", "content": s}]  # noqa: E731


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# 1. invalid UTF-8 names the file and the line


@pytest.mark.parametrize(
    "name, content, where",
    [
        ("bad.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "caf\xe9"}\n', r"bad\.jsonl: line 3: "),
        ("bad.json", b'[{"text": "a"},\n {"text": "caf\xe9"}]', r"bad\.json: line 2: "),
        ("bad.csv", b"text\na\nb\ncaf\xe9\n", r"bad\.csv: line 4: "),
    ],
)
def test_invalid_utf8_names_file_and_line(tmp_path, name, content, where):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=where + r"not valid UTF-8 \(byte 0xe9"):
        load_examples(p)


def test_invalid_utf8_line_is_a_counted_skip(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n{"text": "b"}\n')
    exs, report = load_examples(p, on_error="skip")
    assert [e.completion for e in exs] == ["a", "b"]
    assert report.rows == 3 and sum(report.skipped.values()) == 1
    assert "line 2: not valid UTF-8" in report.first_errors[0]


# 2. a corrupt .jsonl.gz names the file (and the line reached)


def test_truncated_gzip_names_file_and_line_reached(tmp_path):
    rng = random.Random(0)
    rows = [{"text": "".join(rng.choice("abcdefgh ") for _ in range(200))} for _ in range(2000)]
    data = gzip.compress(jsonl(rows).encode())
    p = tmp_path / "big.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"big\.jsonl\.gz: line (\d+): truncated or corrupt gzip") as e:
        load_examples(p)
    assert int(str(e.value).split("line ")[1].split(":")[0]) > 1  # the line it got to


def test_plain_file_named_gz_names_the_file(tmp_path):
    p = tmp_path / "plain.jsonl.gz"
    p.write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match=r"plain\.jsonl\.gz: not a gzip file"):
        load_examples(p)


def test_gzip_file_named_jsonl_says_so(tmp_path):
    p = tmp_path / "packed.jsonl"
    p.write_bytes(gzip.compress(b'{"text": "a"}\n'))
    with pytest.raises(DataError, match=r"packed\.jsonl: line 1: not valid UTF-8 .*gzip-compressed"):
        load_examples(p)


# 3. a folder that is not a data set; a missing path; an unknown extension


def test_empty_folder_says_what_is_expected(tmp_path):
    d = tmp_path / "nothing"
    d.mkdir()
    with pytest.raises(DataError, match=r"nothing: not a dataset folder \(expected a folder written by datasets\.save_to_disk"):
        load_examples(d)


def test_folder_of_random_files_names_the_data_files_in_it(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    (d / "train.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match=r"mixed: not a dataset folder .*it holds train\.jsonl: give one file"):
        load_examples(d)


def test_broken_datasets_folder_names_the_folder(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "state.json").write_text("{not json")
    (d / "dataset_info.json").write_text("{}")
    with pytest.raises(DataError, match=r"broken: cannot load this datasets folder"):
        load_examples(d)


def test_missing_path_and_unknown_extension_name_the_file(tmp_path):
    """(Already right before this change; kept as a guard.) The extension list names .jsonl.gz too."""
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or folder"):
        load_examples(tmp_path / "nope.jsonl")
    p = tmp_path / "data.txt"
    p.write_text("a")
    with pytest.raises(DataError, match=r"data\.txt: unknown file type \(expected .jsonl, .jsonl.gz"):
        load_examples(p)


# 4. format detection names the source, the columns found and the kinds known


def test_undetectable_format_names_file_columns_and_kinds(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(jsonl([{"question": "q", "solution": "s"}]))
    with pytest.raises(DataError) as e:
        load_examples(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: cannot tell the dataset format from the columns ['question', 'solution']")
    assert "known kinds: language_modeling (text | messages)" in msg and "verifiable (prompt+answer)" in msg
    assert "column map" in msg and "\n" not in msg


def test_detect_kind_takes_the_source():
    from posttrain.data import detect_kind

    with pytest.raises(DataError, match=r"^f\.csv: cannot tell .*\['x'\]; known kinds: .*stepwise"):
        detect_kind({"x"}, source="f.csv")


# 5. on_error="skip" skips unparseable JSON lines and non-object lines


def test_skip_mode_counts_unparseable_and_non_object_lines(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"text": "a"}\n{"text": \n[1, 2]\n"just a string"\n{"text": "b"}\n')
    exs, report = load_examples(p, on_error="skip")
    assert [e.completion for e in exs] == ["a", "b"]
    assert report.rows == 5 and report.kept == 2 and sum(report.skipped.values()) == 3
    assert report.skipped["not valid JSON"] == 1 and report.skipped["expected a JSON object, got list"] == 1
    assert [m.split(": ")[1] for m in report.first_errors] == ["line 2", "line 3", "line 4"]
    with pytest.raises(DataError, match=r"mixed\.jsonl: line 2: not valid JSON"):
        load_examples(p)  # on_error="raise" (the default) still raises


def test_skip_mode_detects_the_kind_from_the_first_readable_line(tmp_path):
    p = tmp_path / "late.jsonl"
    p.write_text('oops\n{"prompt": "p", "completion": "c"}\n')
    exs, report = load_examples(p, on_error="skip")
    assert report.kind == "prompt_completion" and len(exs) == 1 and sum(report.skipped.values()) == 1


def test_csv_row_with_extra_cells_is_named_and_skippable(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text\na\nb,c\nd\n")
    with pytest.raises(DataError, match=r"t\.csv: row 2: 2 cells, but the header has 1 columns"):
        load_examples(p)
    exs, report = load_examples(p, on_error="skip")
    assert [e.completion for e in exs] == ["a", "d"] and sum(report.skipped.values()) == 1


# 6. SFT accepts only rows with something to learn


NOTHING_TO_LEARN = [
    ({"prompt": "2+2="}, "completion", "kind 'prompt_only'"),
    ({"prompt": "2+2=", "answer": "4"}, "completion", "kind 'verifiable'; use posttrain rl or posttrain eval"),
    ({"prompt": "2+2=", "chosen": "4", "rejected": "5"}, "completion", "kind 'preference'; use posttrain dpo"),
    ({"prompt": "2+2=", "completion": "4", "label": True}, "completion", "kind 'unpaired_preference'"),
    ({"prompt": "2+2", "completions": ["4"], "labels": [True]}, "completion", "kind 'stepwise'; use posttrain prm"),
    ({"messages": U("2+2") + A("")}, "messages", "message 1: empty assistant turn"),
    ({"messages": U("2+2") + A("4") + U("3+3") + A("  ")}, "messages", "message 3: empty assistant turn"),
    ({"messages": U("2+2")}, "messages", "no assistant turn"),
    ({"prompt": U("2+2"), "completion": A("")}, "completion", "message 0: empty assistant turn"),
    ({"prompt": U("2+2"), "completion": U("4")}, "completion", "no assistant turn"),
]


@pytest.mark.parametrize("row, field, what", NOTHING_TO_LEARN, ids=lambda v: str(v)[:40] if isinstance(v, dict) else None)
def test_sft_refuses_rows_with_nothing_to_learn(tmp_path, row, field, what):
    from posttrain.data import check_sft_examples

    p = tmp_path / "train.jsonl"
    p.write_text(jsonl([row] * 4))
    exs, _ = load_examples(p)
    with pytest.raises(DataError) as e:
        check_sft_examples(exs, on_error="raise")
    msg = str(e.value)
    assert msg.startswith(f"{p}: line 1: field '{field}': ") and what in msg, msg


def test_sft_check_keeps_good_rows_and_counts_skips():
    from posttrain.data import check_sft_examples

    good = [{"text": "hello"}, {"messages": U("hi") + A("yo")}, {"messages": U("a") + A("b") + U("c")}]
    exs = [load_examples([r])[0][0] for r in good] + [load_examples([{"prompt": "p", "completion": "c"}])[0][0]]
    kept, skipped, errors = check_sft_examples(exs)
    assert kept == exs and skipped == 0 and errors == []
    bad = load_examples([{"messages": U("q") + A("a")}, {"messages": U("q") + A("")}, {"messages": U("q")}])[0]
    kept, skipped, errors = check_sft_examples(bad, on_error="skip")
    assert len(kept) == 1 and skipped == 2
    assert "rows[1]: field 'messages'" in errors[0] and "rows[2]: field 'messages'" in errors[1]
    with pytest.raises(DataError, match=r"no rows SFT can train on \(1 skipped\); first: rows\[2\]: field 'messages'"):
        check_sft_examples(bad[2:], on_error="skip")


def test_prompt_longer_than_max_length_is_named_and_skippable(tiny):
    from posttrain.data import PromptTooLong, tokenize_sft, tokenize_sft_examples

    _, tok = tiny
    exs, _ = load_examples([{"prompt": "1234567890" * 3, "completion": "7"}, {"prompt": "1+1=", "completion": "2"}])
    n = len(tok("1234567890" * 3, add_special_tokens=True)["input_ids"])
    with pytest.raises(PromptTooLong, match=rf"^rows\[0\]: prompt is {n} tokens, longer than data\.max_length=16; "
                                            r"raise data\.max_length or drop the row$"):
        tokenize_sft(tok, exs[0], max_length=16)
    assert issubclass(PromptTooLong, DataError)
    with pytest.raises(PromptTooLong):
        tokenize_sft_examples(tok, exs, max_length=16)
    out, skipped, errors = tokenize_sft_examples(tok, exs, max_length=16, on_error="skip")
    assert len(out) == 1 and skipped == 1 and errors[0].startswith("rows[0]: prompt is")


# through the front door: `posttrain sft` prints the error as one line and exits 2


def _sft(tmp_path, data, *extra) -> list[str]:
    return ["sft", "--data", str(data), "--max-steps", "1", "--out", str(tmp_path / "x"), *extra]


def _one_line_error(capsys, argv, alone: bool = True) -> str:
    """The CLI's one error line. `alone`: stderr holds nothing else; otherwise only the progress
    lines printed before the error precede it (the console writes to stderr: `data: FILE: N/M rows ...`)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("posttrain sft: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert len(lines) == 1 if alone else lines[0].startswith("data: "), err
    return errors[0]


def test_cli_sft_on_prompt_answer_rows_is_one_line_naming_file_line_and_field(tmp_path, capsys):
    p = tmp_path / "train.jsonl"
    p.write_text(jsonl([{"prompt": "2+2=", "answer": "4"}] * 3))
    err = _one_line_error(capsys, _sft(tmp_path, p), alone=False)
    assert f"{p}: line 1: field 'completion': missing: SFT needs a completion (this row is kind 'verifiable'" in err


def test_cli_sft_on_an_empty_assistant_turn_names_the_line(tmp_path, capsys):
    p = tmp_path / "chat.jsonl"
    p.write_text(jsonl([{"messages": U("hi") + A("yo")}] * 3 + [{"messages": U("hi") + A("")}]))
    err = _one_line_error(capsys, _sft(tmp_path, p), alone=False)
    assert f"{p}: line 4: field 'messages': message 1: empty assistant turn" in err


def _hostile(tmp_path):
    rng = random.Random(0)
    big = gzip.compress(jsonl([{"text": "".join(rng.choice("abc ") for _ in range(200))} for _ in range(2000)]).encode())
    folder = tmp_path / "folder"
    folder.mkdir()
    return {
        "utf8": ("u.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n', r"u\.jsonl: line 2: not valid UTF-8"),
        "gzip": ("t.jsonl.gz", big[: len(big) // 2], r"t\.jsonl\.gz: line \d+: truncated or corrupt gzip"),
        "folder": (folder, None, r"folder: not a dataset folder"),
        "columns": ("q.jsonl", b'{"question": "q"}\n', r"q\.jsonl: cannot tell the dataset format from the columns \['question'\]"),
        "json": ("j.jsonl", b'{"text": "a"}\n{"text": \n', r"j\.jsonl: line 2: not valid JSON"),
        "too_long": ("long.jsonl", (json.dumps({"prompt": "9" * 40, "completion": "1"}) + "\n").encode(),
                     r"long\.jsonl: line 1: prompt is \d+ tokens, longer than data\.max_length=8"),
    }


@pytest.mark.parametrize("case", ["utf8", "gzip", "folder", "columns", "json", "too_long"])
def test_cli_sft_hostile_files_give_one_line(tmp_path, capsys, case):
    import re

    name, content, pattern = _hostile(tmp_path)[case]
    p = tmp_path / name if content is not None else name
    if content is not None:
        p.write_bytes(content)
    err = _one_line_error(capsys, _sft(tmp_path, p, "--data.max_length", "8"), alone=case != "too_long")
    assert re.search(pattern, err), err


def test_cli_sft_skip_mode_trains_on_the_good_rows_and_reports_the_skips(tmp_path, capsys):
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"prompt": "1+1=", "completion": "2"}\nnot json\n{"prompt": "2+2=", "completion": "4"}\n'
                 + json.dumps({"prompt": "9" * 40, "completion": "1"}) + "\n")
    assert main(_sft(tmp_path, p, "--data.on_error", "skip", "--data.max_length", "16")) == 0
    err = "".join(capsys.readouterr().err.split())  # the console (stderr) wraps long lines
    assert "3/4rowsofkindprompt_completion" in err and f"skipped:{p}:line2:notvalidJSON" in err
    assert f"skipped:{p}:line4:promptis" in err and '"train_examples":2' in err
