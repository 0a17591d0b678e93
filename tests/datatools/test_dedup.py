"""`posttrain data dedup`: planted exact and near-duplicates are removed, naming the row they repeat."""
import json
import random

from posttrain.cli import main
from posttrain.datatools.dedup import find_duplicates, jaccard, shingles


def _word(rng):
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))


def _sentence(rng, n=100):
    return " ".join(_word(rng) for _ in range(n))


def _rows():
    """20 distinct questions; row 21 repeats row 3 (case and punctuation changed), row 22 is row 7
    with two words changed, row 23 is row 12 with its first half rewritten (not a duplicate)."""
    rng = random.Random(0)
    qs = [_sentence(rng) for _ in range(20)]
    rows = [{"question": q, "answer": str(i)} for i, q in enumerate(qs)]
    w = qs[2].split()
    rows.append({"question": (" ".join(w[:50]).upper() + ", " + " ".join(w[50:]) + "?!"), "answer": "x"})
    w = qs[6].split()
    w[30], w[70] = "changed", "words"
    rows.append({"question": " ".join(w), "answer": "y"})
    w = qs[11].split()
    rows.append({"question": _sentence(rng, 50) + " " + " ".join(w[50:]), "answer": "z"})
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_shingles_and_jaccard():
    assert shingles("The cat, the CAT!", 2) == {"the cat", "cat the"}
    assert shingles("one two", 3) == {"one two"}  # shorter than a shingle: one shingle
    assert shingles("...", 3) == set()
    assert jaccard({"a", "b"}, {"b", "c"}) == 1 / 3


def test_planted_duplicates_found_and_distinct_rows_kept():
    rows = _rows()
    dup, info = find_duplicates([r["question"] for r in rows], threshold=0.7, shingle=3, num_perm=128, seed=0)
    assert set(dup) == {20, 21}
    assert dup[20] == (2, "exact", 1.0)
    kept_of, how, sim = dup[21]
    assert (kept_of, how) == (6, "near") and 0.8 < sim < 1.0
    assert info["lsh_bands"] * info["lsh_rows"] <= 128
    # exact only: the edited row stays
    dup, _ = find_duplicates([r["question"] for r in rows], near=False)
    assert set(dup) == {20}
    # a threshold above the edited row's similarity keeps it
    dup, _ = find_duplicates([r["question"] for r in rows], threshold=0.95)
    assert set(dup) == {20}


def test_cli_writes_kept_rows_with_source_columns_and_reasons(tmp_path):
    rows = _rows()
    f = _write(tmp_path / "train.jsonl", rows)
    out = tmp_path / "dd"
    rc = main(["data", "dedup", "--data", str(f), "--data.columns", "question=prompt", "--out", str(out),
               "--progress", "false"])
    assert rc == 0
    kept = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert kept == rows[:20] + rows[22:]  # input order, source column names, nothing added
    assert all(list(r) == ["question", "answer"] for r in kept)
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert [r["row"] for r in removed] == [21, 22]
    assert removed[0]["reason"] == "exact duplicate of row 3"
    assert removed[1]["reason"].startswith("near-duplicate of row 7 (jaccard 0.")
    assert removed[1]["data"] == rows[21]
    report = json.loads((out / "report.json").read_text())
    assert report["cmd"] == "dedup" and report["exact_duplicates"] == 1 and report["near_duplicates"] == 1
    assert report["kept"] == 21 and report["removed"] == 2
    assert (out / "report.md").exists()


def test_fields_choose_what_is_compared(tmp_path):
    rows = [{"prompt": "same question text here", "completion": f"answer number {i} " * 5} for i in range(3)]
    f = _write(tmp_path / "pc.jsonl", rows)
    assert main(["data", "dedup", "--data", str(f), "--out", str(tmp_path / "a")]) == 0
    assert len((tmp_path / "a" / "data.jsonl").read_text().splitlines()) == 1  # default: the prompt
    assert main(["data", "dedup", "--data", str(f), "--dedup.fields", "prompt,completion", "--out", str(tmp_path / "b")]) == 0
    assert len((tmp_path / "b" / "data.jsonl").read_text().splitlines()) == 3


def test_non_empty_out_refused_without_overwrite(tmp_path, capsys):
    f = _write(tmp_path / "train.jsonl", _rows())
    args = ["data", "dedup", "--data", str(f), "--data.columns", "question=prompt", "--out", str(tmp_path / "dd")]
    assert main(args) == 0
    before = (tmp_path / "dd" / "data.jsonl").read_text()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "true"]) == 0
    assert (tmp_path / "dd" / "data.jsonl").read_text() == before
