"""What the sandbox costs per test case: 200 trivial programs scored, side by side with a bare subprocess.

    python benchmarks/sandbox_overhead.py [--n 200]

Three rows, each program timed both ways in turn (interleaved, so machine noise hits both alike),
sequentially (one run at a time: latency, not throughput):

- run:      ``run_python(code)`` vs ``subprocess.run([sys.executable, "-c", code])``
- stdin:    `run_tests` on one stdin/stdout case (one sandbox run, the parent compares) vs the bare
            subprocess fed the input, its stdout compared in the caller
- humaneval: `run_tests` on a HumanEval-style ``check`` with one assert (record / replay: three sandbox
            runs, see `posttrain.rewards.code`) vs the bare subprocess running program + check in one
            process (the unguarded harness of the peers)

Every scored case must pass both ways (checked). Prints ms per test case and the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from posttrain.rewards.code import run_tests
from posttrain.sandbox import LocalSandbox, run_python


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bare(code: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, text=True, timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    n = ap.parse_args().n
    sandbox = LocalSandbox()
    rows = {"run": ([], []), "stdin": ([], []), "humaneval": ([], [])}
    for i in range(n):
        code = f"print({i} + 1)"
        t_box, r = timed(lambda: run_python(code))
        t_bare, p = timed(lambda: bare(code))
        assert r.stdout == p.stdout == f"{i + 1}\n"
        rows["run"][0].append(t_box)
        rows["run"][1].append(t_bare)

        prog = f"print(int(input()) + {i})"
        tests = {"inputs": ["1\n"], "outputs": [f"{1 + i}\n"]}
        t_box, rep = timed(lambda: run_tests(prog, tests, sandbox=sandbox))
        t_bare, p = timed(lambda: bare(prog, "1\n"))
        assert rep.passed == 1 and p.stdout.strip() == str(1 + i)
        rows["stdin"][0].append(t_box)
        rows["stdin"][1].append(t_bare)

        fn = f"def f(x):\n    return x + {i}\n"
        check = f"def check(candidate):\n    assert candidate(1) == {1 + i}\n"
        t_box, rep = timed(lambda: run_tests(fn, {"test": check, "entry_point": "f"}, sandbox=sandbox))
        t_bare, p = timed(lambda: bare(fn + check + "check(f)\n"))
        assert rep.passed == 1 and p.returncode == 0
        rows["humaneval"][0].append(t_box)
        rows["humaneval"][1].append(t_bare)

    print(f"{n} trivial programs, sequential; isolation={sandbox.isolation}; python {sys.version.split()[0]}")
    print(f"{'per test case':<12} {'sandbox ms':>11} {'bare ms':>9} {'ratio':>7}   (median; mean in parentheses)")
    for name, (box, plain) in rows.items():
        mb, mp = statistics.median(box) * 1e3, statistics.median(plain) * 1e3
        print(f"{name:<12} {mb:>11.1f} {mp:>9.1f} {mb / mp:>6.1f}x   ({statistics.mean(box) * 1e3:.1f} / "
              f"{statistics.mean(plain) * 1e3:.1f})")


if __name__ == "__main__":
    main()
