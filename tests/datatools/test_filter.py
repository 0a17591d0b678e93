import json

import pytest

from posttrain.config import ConfigError
from posttrain.data.sources import DataError
from posttrain.datatools import filters
from posttrain.datatools.config import DataIn, DataModel, DataToolsConfig, FilterOptions


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(tmp_path, rows, columns=None, on_error="raise", model="tiny-llama", **opts):
    f = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    cfg = DataToolsConfig(cmd="filter", out=str(out), overwrite=True, model=DataModel(name=model),
                          data=DataIn(path=str(f), columns=columns or {}, on_error=on_error),
                          filter=FilterOptions(**opts))
    report = filters.run(cfg)
    kept = [json.loads(l) for l in open(out / "data.jsonl")]
    removed = [json.loads(l) for l in open(out / "removed.jsonl")]
    return kept, removed, report


RATED = [{"prompt": f"p{i}", "answer": "1", "pass_rate": p} for i, p in enumerate([0.0, 0.5, 1.0])]


@pytest.mark.parametrize("band, kept_rates", [
    ("inclusive", [0.0, 0.5, 1.0]),
    ("exclusive", [0.5]),
    ("exclusive_min", [0.5, 1.0]),
    ("exclusive_max", [0.0, 0.5]),
])
def test_pass_rate_band_ends(tmp_path, band, kept_rates):
    kept, removed, _ = _run(tmp_path, RATED, min_pass_rate=0.0, max_pass_rate=1.0, band=band)
    assert [r["pass_rate"] for r in kept] == kept_rates
    assert len(removed) == 3 - len(kept_rates)


def test_exclusive_band_reasons_name_the_end_and_value(tmp_path):
    kept, removed, report = _run(tmp_path, RATED, min_pass_rate=0.0, max_pass_rate=1.0, band="exclusive")
    assert [(r["row"], r["reason"]) for r in removed] == [
        (1, "pass_rate 0 <= min_pass_rate 0 (band exclusive)"),
        (3, "pass_rate 1 >= max_pass_rate 1 (band exclusive)")]
    assert report["removed_by"] == {"pass_rate": 2}


def test_only_one_end_of_the_band(tmp_path):
    kept, removed, _ = _run(tmp_path, RATED, max_pass_rate=0.5)
    assert [r["pass_rate"] for r in kept] == [0.0, 0.5]
    assert removed[0]["reason"] == "pass_rate 1 > max_pass_rate 0.5 (band inclusive)"


def test_null_or_missing_pass_rate_is_removed_when_a_band_is_set(tmp_path):
    rows = RATED + [{"prompt": "p3", "answer": "1", "pass_rate": None}, {"prompt": "p4", "answer": "1"}]
    kept, removed, _ = _run(tmp_path, rows, min_pass_rate=0.0)
    assert [r["prompt"] for r in kept] == ["p0", "p1", "p2"]
    assert [(r["row"], r["reason"].split(" (")[0]) for r in removed] == [
        (4, "pass_rate: null"), (5, "pass_rate: no such column")]
    # without a band they stay
    kept, removed, _ = _run(tmp_path, rows, max_length=100)
    assert len(kept) == 5 and removed == []


def test_empty_band_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="band is empty"):
        _run(tmp_path, RATED, min_pass_rate=0.5, max_pass_rate=0.5, band="exclusive")
    with pytest.raises(ConfigError, match="min_pass_rate 0.8 > filter.max_pass_rate 0.2"):
        _run(tmp_path, RATED, min_pass_rate=0.8, max_pass_rate=0.2)


TEXTS = [{"prompt": "a b c", "completion": "one two three four"},  # 5 chars, 3 words; 18 chars, 4 words
         {"prompt": "hello world", "completion": "x"},  # 11 chars, 2 words; 1 char, 1 word
         {"prompt": "a  b c d e", "completion": "yes no"}]  # 10 chars, 5 words; 6 chars, 2 words


def test_length_in_words_of_the_prompt(tmp_path):
    kept, removed, _ = _run(tmp_path, TEXTS, length_unit="words", max_length=3)
    assert [r["prompt"] for r in kept] == ["a b c", "hello world"]
    assert removed[0]["reason"] == "length 5 words > max_length 3 (prompt)"
    kept, _, _ = _run(tmp_path, TEXTS, length_unit="words", min_length=3)
    assert [r["prompt"] for r in kept] == ["a b c", "a  b c d e"]


def test_length_in_chars_of_completion_and_all(tmp_path):
    kept, removed, _ = _run(tmp_path, TEXTS, length_of="completion", min_length=2, max_length=10)
    assert [r["completion"] for r in kept] == ["yes no"]
    assert [r["reason"] for r in removed] == ["length 18 chars > max_length 10 (completion)",
                                              "length 1 chars < min_length 2 (completion)"]
    kept, removed, _ = _run(tmp_path, TEXTS, length_of="all", max_length=16)  # 23, 12, 16
    assert [r["prompt"] for r in kept] == ["hello world", "a  b c d e"]
    assert removed[0]["reason"] == "length 23 chars > max_length 16 (all)"


def test_length_in_tokens_uses_the_models_tokenizer(tmp_path):
    # the tiny models' character tokenizer: one token per character, no special tokens added
    kept, removed, report = _run(tmp_path, TEXTS, length_unit="tokens", max_length=10, model="tiny-llama")
    assert [r["prompt"] for r in kept] == ["a b c", "a  b c d e"]
    assert removed[0]["reason"] == "length 11 tokens > max_length 10 (prompt)"
    assert report["model"] == "tiny-llama"


WHERE = [{"prompt": "p1", "answer": "1", "level": 1, "votes": 3},
         {"prompt": "p2", "answer": "1", "level": 3, "votes": 12},
         {"prompt": "p3", "answer": "1", "level": 4, "votes": 9},
         {"prompt": "p4", "answer": "1", "level": "5", "votes": 0}]  # a numeric string (CSV) counts


def test_where_conditions_all_must_hold(tmp_path):
    kept, removed, report = _run(tmp_path, WHERE, where=("level>=3,votes<10",))
    assert [r["prompt"] for r in kept] == ["p3", "p4"]
    assert [(r["row"], r["reason"]) for r in removed] == [(1, "where level>=3: level is 1"),
                                                          (2, "where votes<10: votes is 12")]
    assert report["removed_by"] == {"where level>=3": 1, "where votes<10": 1}
    kept, _, _ = _run(tmp_path, WHERE, where=("level == 3", "votes!=9"))
    assert [r["prompt"] for r in kept] == ["p2"]


def test_where_uses_names_after_the_column_map(tmp_path):
    rows = [{"question": "q1", "answer": "1", "lvl": 2}, {"question": "q2", "answer": "1", "lvl": 5}]
    kept, _, _ = _run(tmp_path, rows, columns={"question": "prompt", "lvl": "level"}, where=("level>2",))
    assert kept == [{"question": "q2", "answer": "1", "lvl": 5}]


@pytest.mark.parametrize("cond", ["level=>3", "level>=x", ">=3", "level 3", "level>=3>=4"])
def test_bad_condition_is_a_config_error_naming_it(tmp_path, cond):
    with pytest.raises(ConfigError, match=f"filter.where '{cond}'"):
        _run(tmp_path, WHERE, where=(cond,))


def test_missing_or_non_numeric_column_names_file_row_and_column(tmp_path):
    rows = WHERE + [{"prompt": "p5", "answer": "1", "votes": 1}, {"prompt": "p6", "answer": "1", "level": "hard", "votes": 1}]
    with pytest.raises(DataError, match=r"in\.jsonl: line 5: field 'level': missing"):
        _run(tmp_path, rows, where=("level>=3",))
    with pytest.raises(DataError, match=r"in\.jsonl: line 5: field 'level': expected a number .* got 'hard'"):
        _run(tmp_path, rows[:4] + rows[5:], where=("level>=3",))
    kept, removed, report = _run(tmp_path, rows, on_error="skip", where=("level>=3",))
    assert [r["prompt"] for r in kept] == ["p2", "p3", "p4"] and [r["row"] for r in removed] == [1]
    assert report["skipped_rows"] == 2 and report["rows"] == 4
    assert "line 5: field 'level'" in report["first_errors"][0]


def test_no_condition_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no condition set"):
        _run(tmp_path, RATED)


def test_cli_front_door(tmp_path):
    from posttrain.cli import main

    rows = [{"question": f"q{i}", "solution": "1", "pass_rate": p} for i, p in enumerate([0.0, 0.5, None, 0.25])]
    f = _write(tmp_path / "pr.jsonl", rows)
    d = tmp_path / "f"
    assert main(["data", "filter", "--data", str(f), "--data.columns", "question=prompt,solution=answer",
                 "--filter.min_pass_rate", "0", "--filter.band", "exclusive", "--out", str(d)]) == 0
    assert [json.loads(l) for l in open(d / "data.jsonl")] == [rows[1], rows[3]]
    assert [json.loads(l)["row"] for l in open(d / "removed.jsonl")] == [1, 3]
    report = json.loads((d / "report.json").read_text())
    assert report["cmd"] == "filter" and report["kept"] == 2 and report["removed"] == 2
    # an earlier output is refused without --overwrite
    assert main(["data", "filter", "--data", str(f), "--data.columns", "question=prompt,solution=answer",
                 "--filter.min_pass_rate", "0", "--out", str(d)]) == 2
