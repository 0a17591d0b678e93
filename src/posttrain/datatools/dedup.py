"""`posttrain data dedup`: remove exact and near-duplicate training rows (the first of each group is kept).

    posttrain data dedup --data train.jsonl --out runs/dd [--dedup.fields prompt] [--dedup.threshold 0.7]

The compared text of a row is its ``--dedup.fields`` (names after ``--data.columns``) joined, or its
prompt, or (rows without a prompt) all of its text, normalized as `posttrain.datatools.table.normalize`
(lowercase, punctuation and LaTeX markup to spaces).

1. Exact duplicates (``--dedup.exact``): rows whose normalized text hashes (SHA-1) the same as an
   earlier row's are removed ("exact duplicate of row 3").
2. Near-duplicates (``--dedup.near``): each remaining row's text becomes its set of word shingles
   (``--dedup.shingle`` consecutive words; a text shorter than that is one shingle). A MinHash
   signature of the set (Broder 1997, "On the resemblance and containment of documents";
   ``--dedup.num_perm`` permutations, seeded by ``--seed``) goes through locality-sensitive hashing
   with bands and rows chosen for ``--dedup.threshold`` (datasketch's `MinHashLSH`), which proposes
   candidate pairs; each candidate is then checked with the *exact* Jaccard similarity of the two
   shingle sets, and a row at or above the threshold to a kept row is removed, its reason naming
   that row ("near-duplicate of row 12 (jaccard 0.83)"). This is the NearDup pipeline of Lee et al.
   2022, "Deduplicating training data makes language models better" (MinHash + LSH over word
   n-grams, then a similarity check of the candidates).

Departures from Lee et al. 2022:
- rows are visited in input order and compared only with the rows already *kept*: a row similar to a
  removed row but to no kept one stays (their connected-components clusters would drop a whole chain
  A~B~C down to one row even when A and C are unalike). "Keep the first of each cluster" holds for
  every cluster of mutually similar rows;
- the candidate check is the exact Jaccard similarity of the shingle sets (theirs: the MinHash
  estimate, or edit similarity), so the MinHash/LSH step only decides which pairs are compared and
  a reported similarity is never an estimate;
- word shingles of 3 by default (theirs: 5-grams of tokens over long web documents); training rows
  for post-training are short problems, where 5-grams leave too few shingles;
- no exact *substring* deduplication (their suffix-array ExactSubstr): rows are kept or removed
  whole, as a training row is one example.
"""
from __future__ import annotations

import hashlib
import time

from posttrain.config import ConfigError
from posttrain.datatools.config import DataToolsConfig
from posttrain.datatools.stage import check_out, write_outputs
from posttrain.datatools.table import Item, load_table, normalize

__all__ = ["run", "shingles", "jaccard", "row_text", "find_duplicates"]


def row_text(item: Item, fields: tuple[str, ...] = ()) -> str:
    """The compared text: `fields` joined, else the prompt, else all the row's text."""
    if fields:
        return "\n".join(item.texts(fields))
    return item.prompt_text() or "\n".join(item.texts())


def shingles(text: str, k: int) -> set[str]:
    """The set of `k`-word shingles of the normalized text (one shingle when it has fewer words)."""
    w = normalize(text).split()
    if not w:
        return set()
    if len(w) <= k:
        return {" ".join(w)}
    return {" ".join(w[i:i + k]) for i in range(len(w) - k + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def find_duplicates(texts: list[str], *, exact: bool = True, near: bool = True, threshold: float = 0.7,
                    shingle: int = 3, num_perm: int = 128, seed: int = 0) -> tuple[dict[int, tuple[int, str, float]], dict]:
    """Duplicates among `texts`: {index of a removed text: (index of the kept text it duplicates,
    "exact" | "near", jaccard)}, and a few facts for the report (LSH bands and rows).

    Empty texts (nothing left after normalization) are never duplicates."""
    dup: dict[int, tuple[int, str, float]] = {}
    info: dict = {}
    if exact:
        first: dict[bytes, int] = {}
        for i, t in enumerate(texts):
            norm = normalize(t)
            if not norm:
                continue
            key = hashlib.sha1(norm.encode()).digest()
            if key in first:
                dup[i] = (first[key], "exact", 1.0)
            else:
                first[key] = i
    if near:
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        info["lsh_bands"], info["lsh_rows"] = lsh.b, lsh.r
        sets: dict[int, set[str]] = {}
        checked = 0
        for i, t in enumerate(texts):
            if i in dup:
                continue
            s = shingles(t, shingle)
            if not s:
                continue
            m = MinHash(num_perm=num_perm, seed=seed)
            m.update_batch([x.encode() for x in s])
            best, best_j = None, -1.0
            for j in sorted(lsh.query(m)):
                checked += 1
                sim = jaccard(s, sets[j])
                if sim >= threshold and sim > best_j:
                    best, best_j = j, sim
            if best is not None:
                dup[i] = (best, "near", best_j)
                continue
            sets[i] = s
            lsh.insert(i, m)
        info["candidate_pairs_checked"] = checked
    return dup, info


def run(cfg: DataToolsConfig) -> dict:
    o = cfg.dedup
    if not (o.exact or o.near):
        raise ConfigError("dedup: both --dedup.exact and --dedup.near are false; nothing to do")
    out = check_out(cfg)
    t0 = time.perf_counter()
    table = load_table(cfg.data)
    texts = [row_text(it, o.fields) for it in table.items]
    dup, info = find_duplicates(texts, exact=o.exact, near=o.near, threshold=o.threshold, shingle=o.shingle,
                                num_perm=o.num_perm, seed=cfg.seed)
    kept, removed = [], []
    for i, it in enumerate(table.items):
        if i not in dup:
            kept.append(it)
            continue
        j, how, sim = dup[i]
        line = table.items[j].line
        why = f"exact duplicate of row {line}" if how == "exact" else f"near-duplicate of row {line} (jaccard {sim:.2f})"
        removed.append((it, why))
    n_exact = sum(1 for v in dup.values() if v[1] == "exact")
    report = {"cmd": "dedup", "fields": list(o.fields) or "prompt (else all text)", "exact": o.exact, "near": o.near,
              "threshold": o.threshold, "shingle": o.shingle, "num_perm": o.num_perm, "seed": cfg.seed,
              "exact_duplicates": n_exact, "near_duplicates": len(dup) - n_exact, **info,
              "seconds": round(time.perf_counter() - t0, 3)}
    md = [f"- exact duplicates: {n_exact}", f"- near-duplicates (jaccard >= {o.threshold} over {o.shingle}-word "
          f"shingles): {len(dup) - n_exact}", ""]
    if removed:
        md += ["| row | reason |", "|---|---|"] + [f"| {it.line} | {why} |" for it, why in removed[:20]]
    return write_outputs(out, table, kept, removed, report, md)
