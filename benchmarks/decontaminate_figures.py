"""13-gram overlap of the shared training sets with the benchmarks `posttrain eval` scores.

    python benchmarks/decontaminate_figures.py                 # data under ../shared/data
    python benchmarks/decontaminate_figures.py --root DIR --out runs/decontam-figures

Runs `posttrain data decontaminate` through the CLI front door (`posttrain.cli.main`) for
- GSM8K train (gsm8k/train.jsonl, 7,473 rows) against ``--benchmark gsm8k`` (gsm8k/test.jsonl, 1,319);
- MATH train (the first 7,500 rows of math/train12k.jsonl, MATH's own train split) against
  ``--benchmark math500``; and the whole train12k file (MATH train + the 4,500 MATH test problems not
  in MATH-500, the PRM800K training membership) against it too;
each with every text column checked (question / problem, solution, answer) and with the problem
text only, and prints: train rows, rows overlapping at 13-grams, distinct test problems hit, seconds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from posttrain.cli import main

RUNS = [  # (label, file under the root, column map, --data.limit, benchmark)
    ("gsm8k train vs gsm8k test", "gsm8k/train.jsonl", "question=prompt", 0, "gsm8k"),
    ("MATH train (7.5k) vs MATH-500", "math/train12k.jsonl", "problem=prompt", 7500, "math500"),
    ("MATH train12k vs MATH-500", "math/train12k.jsonl", "problem=prompt", 0, "math500"),
]


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="../shared/data", help="data root (gsm8k/, math/)")
    ap.add_argument("--out", default="runs/decontam-figures", help="output folders go under here")
    ap.add_argument("--n", type=int, default=13, help="words per n-gram")
    args = ap.parse_args(argv)
    rows = []
    for label, file, cols, limit, bench in RUNS:
        for fields, what in (("", "all text"), ("prompt", "problem only")):
            out = Path(args.out) / f"{bench}-{limit or 'all'}-{fields or 'all'}"
            cmd = ["data", "decontaminate", "--data", str(Path(args.root) / file), "--data.columns", cols,
                   "--data.kind", "prompt_only", "--data.limit", str(limit), "--benchmark", bench,
                   "--data.root", args.root, "--decontam.n", str(args.n), "--out", str(out), "--overwrite", "true",
                   "--progress", "false"]
            if fields:
                cmd += ["--decontam.fields", fields]
            t0 = time.perf_counter()
            rc = main(cmd)
            secs = time.perf_counter() - t0
            if rc != 0:
                print(f"{label}: posttrain {' '.join(cmd)} failed (rc {rc})")
                return rc
            rep = json.loads((out / "report.json").read_text())
            b = rep["benchmarks"][bench]
            rows.append((label, what, rep["rows"], b["rows_overlapping"], b["problems_hit"], b["problems"], secs))
    print(f"\n{args.n}-gram overlap (posttrain data decontaminate; words() normalization, template n-grams in >10 "
          "test problems ignored, test problems of 8-12 words matched whole)\n")
    print("| train set vs benchmark | train text checked | train rows | rows overlapping | test problems hit | seconds |")
    print("|---|---|---|---|---|---|")
    for label, what, n, r, h, p, s in rows:
        print(f"| {label} | {what} | {n} | {r} | {h} / {p} | {s:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
