"""Code rewards: run a completion's program against tests in the sandbox, with a verdict it cannot forge.

API::

    extract_program(text) -> str | None
    run_tests(program, tests, sandbox=None, timeout_s=5.0, max_tests=32) -> TestReport
    code_reward(prompts, completions, test=None, entry_point=None, input_output=None, fn_name=None,
                test_list=None, partial=False, timeout_s=5.0, **columns) -> list[float | None]
    code_reward_stats(reset=False) -> dict   pass rate, compile errors, timeouts since the last reset
    set_code_sandbox(sandbox)                the Sandbox code_reward uses (default LocalSandbox())

Test formats (`tests` is a dict; `code_reward` builds it from the row's columns):

- HumanEval: ``{"test": "def check(candidate): assert ...", "entry_point": "f"}`` (+ optional
  ``prompt``, HumanEval's code prompt). Each top-level statement of ``check`` that holds an ``assert``
  is one test case (other statements are set-up); a ``check`` with ``return``/``yield``/``global``/
  ``nonlocal`` is one case. With ``prompt``, the prompt runs as trusted set-up of the test (so its
  helpers, e.g. HumanEval/32's ``poly``, are the test's and cannot be redefined by the program), and a
  program that does not define the entry point is run as prompt + program (HumanEval's own way).
  Without it, a helper the test uses but does not define is taken from the program, as in HumanEval's
  harness: pass ``prompt`` for HumanEval.
- MBPP: ``{"test_list": ["assert f(1) == 2", ...]}`` (+ optional ``test_setup_code``, ``test_imports``);
  each string is one case.
- APPS / TACO: ``{"input_output": '{"inputs": [...], "outputs": [...]}'}`` (a JSON string or dict), or
  ``{"inputs": ..., "outputs": ...}``: stdin/stdout cases; with ``fn_name`` (in the JSON or beside it)
  call-based cases ``fn_name(*inputs[i]) == outputs[i]`` (a function, or a method of class Solution).
- LiveCodeBench: ``{"test_cases": [{"input": ..., "output": ..., "testtype": "stdin" | "functional"}]}``
  (or its JSON string) + ``fn_name`` / ``func_name``; a functional input is one JSON value per line.

Threat model: the program is adversarial and wants the reward
-------------------------------------------------------------
It runs in the sandbox (`posttrain.sandbox`: no network, no files of ours, killed on time), and the
verdict never comes from a process it has run in:

- **stdin/stdout**: one sandbox run per case. The expected output never enters the sandbox; the
  parent compares (lines right-stripped, leading/trailing blank lines dropped, exact match).
  Printing "all tests passed", exiting 0 early or patching anything changes only its own stdout.
- **call-based** (APPS ``fn_name``, LiveCodeBench functional): one run of a fixed harness that
  loads ``solution.py`` and calls the function once per case (each call's result its own record). The return value is encoded in the child into
  plain JSON by exact type (``type(x) is list``...: an object with an always-true ``__eq__``, or any
  subclass, is refused) and decoded and compared with the expected value **in the parent**, where no
  program object exists (so no ``__eq__`` of the program decides). The expected values are never in
  the child. The program can forge its own record, which is no more than returning that value.
- **assert-style** (HumanEval ``check``, MBPP asserts), where the expected values live inside test
  code: record / replay. (1) The test code runs in a sandbox run *without the program*, its function
  replaced by a proxy; every call's arguments are recorded (unknown calls answer a placeholder so the
  run goes on). (2) Each case's calls run in their own sandbox run with the program, as above;
  results come back as plain data. (3) The test code runs again without the program, the proxy
  answering with those plain values (a program exception re-raised as the builtin exception of that
  name, else a CandidateError; SystemExit / os._exit / a timeout are failures). Rounds repeat while
  cases make calls not seen yet (at most 4). Only a case run with every call answered counts. The
  check, its asserts, builtins and the harness are in a process the program never touches, so
  overriding ``check``, patching ``assert``/``builtins``/``sys.exit``, editing a harness file or
  ctypes tricks reach nothing that decides. Names the proxy stands for: the entry point (bound to
  ``check``'s parameter) and, for MBPP, the program's top-level names the test uses and does not
  define itself, **never** a builtin name (a program defining ``abs`` or ``len`` cannot redefine
  the test's comparison) and nothing when the test has a star import. A name the program binds by
  ``import`` (MBPP tests that use the program's ``import math``) is imported by the test itself.
- The program is compiled (never run) in the parent to count compile errors.
- Each harness run prints its records after a per-run random nonce on a private dup of stdout (the
  program's own stdout/stderr go to /dev/null there); records are parsed as data, never evaluated.

Limits: arguments and results must be plain values (no callables, no class instances); in-place
mutation of arguments is not seen by the test; a result over 8000 encoded characters fails its case.

Cost: a stdin case is one sandbox run; a program's call-based cases share one run; an assert-style
test set is one run per case plus two (or more) runs of the test code (`benchmarks/sandbox_overhead.py`).

Departures: DeepCoder, SkyRL and verl's PRIME/APPS harness run assert-style and call-based checks in
the program's own process (``reliability_guard``), so a program can patch them; TACO/APPS's
``testing_util`` also tries several lenient comparisons (float tolerance, token sets) that posttrain
does not. Reward 1.0 when every case passes (DeepCoder, SkyRL), the fraction with ``partial=True``.
"""
from __future__ import annotations

import ast
import os
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from posttrain.rewards import _code_codec as codec
from posttrain.rewards._code_formats import _top_level_names as _top_names
from posttrain.rewards._code_formats import assert_plan, compiles, normalize_tests
from posttrain.rewards._code_harness import candidate_program, parse_records, replay_program
from posttrain.sandbox import RunResult, Sandbox, SandboxPool

__all__ = ["extract_program", "run_tests", "TestReport", "code_reward", "code_reward_stats", "set_code_sandbox"]

MAX_ROUNDS = 4
MEMORY_MB = 512
MAX_ERRORS = 8
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class TestReport:
    """passed of total cases; compile_error: the program does not compile (nothing was run);
    timeouts: cases that ran out of time; errors: up to 8 short reasons for failed cases."""

    __test__ = False  # not a pytest class, whatever its name

    passed: int
    total: int
    compile_error: bool
    timeouts: int
    errors: list[str] = field(default_factory=list)

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


# ---------------------------------------------------------------- the program
def extract_program(text: str) -> str | None:
    """The last ```python (or ```py) fenced block, else the last untagged ``` block, else the whole
    text if it compiles as Python, else None."""
    if not text:
        return None
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text) if body.strip()]
    for wanted in (("python", "py", "python3"), ("",)):
        tagged = [body for lang, body in blocks if lang in wanted]
        if tagged:
            return tagged[-1]
    return text if text.strip() and compiles(text) else None


# ---------------------------------------------------------------- comparing plain values (parent only)
def _same(got, want) -> bool:
    """Structural equality of two decoded plain values (never objects of the program): bools only equal
    bools, ints and floats compare by value, tuples equal lists (JSON has no tuples), NaN equals nothing."""
    if type(got) is bool or type(want) is bool:
        return type(got) is type(want) and got == want
    if type(got) in (int, float) and type(want) in (int, float):
        return got == want
    if type(want) is list and type(got) in (list, tuple):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if type(want) is dict and type(got) is dict:
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return type(got) is type(want) and got == want


def _normalize_output(s: str) -> str:
    return "\n".join(line.rstrip() for line in s.strip("\n").splitlines()).strip()


# ---------------------------------------------------------------- running
def _call_records(res: RunResult, nonce: str, n_calls: int) -> list[dict]:
    """The table record of each call of a candidate run (untrusted data, validated by decoding)."""
    recs = parse_records(res.stdout, nonce)
    load = next((r["load"] for r in recs if "load" in r), "missing")
    by_i = {r["i"]: r for r in recs if isinstance(r.get("i"), int)}
    out = []
    for i in range(n_calls):
        r = by_i.get(i)
        if r is not None and "ok" in r:
            try:
                codec.decode(r["ok"])
                out.append({"ok": r["ok"]})
                continue
            except (ValueError, TypeError, KeyError):
                out.append({"err": ["BadResult", "the result record is not a plain value"]})
                continue
        if r is not None and isinstance(r.get("err"), list):
            out.append({"err": [str(x)[:300] for x in r["err"][:2]]})
        elif load not in (None, "missing"):
            out.append({"err": [str(x)[:300] for x in list(load)[:2]]})
        elif res.status == "timeout":
            out.append({"timeout": True})
        else:
            out.append({"missing": f"the program stopped before returning ({res.reason})"})
    return out


def _run_io(program: str, spec: dict, pool: SandboxPool, timeout_s: float, max_tests: int, stop_on_fail: bool):
    """stdin cases: one sandbox run each. Call-based cases: all in one run of the harness (each call's
    result is its own record, decoded and compared here), which is as safe as a run per case: the
    program can only change what its own calls return. A run that dies or times out fails the calls
    it did not answer."""
    cases = spec["cases"][:max_tests]
    calls = [k for k, c in enumerate(cases) if c[0] == "call"]
    verdicts: dict[int, tuple[bool, str, bool]] = {}
    jobs, keys = [], []  # keys: a stdin case index, or ("calls", nonce)
    for k, (mode, inp, _) in enumerate(cases):
        if mode == "stdin":
            jobs.append({"code": program, "stdin": inp, "timeout_s": timeout_s, "memory_mb": MEMORY_MB})
            keys.append(k)
    if calls:
        nonce = secrets.token_hex(16)
        batch = [[spec["fn"], codec.encode(cases[k][1]), codec.encode({})] for k in calls]
        jobs.append({"code": candidate_program(nonce, batch), "files": {"solution.py": program},
                     "timeout_s": timeout_s * len(calls), "memory_mb": MEMORY_MB})
        keys.append(("calls", nonce))
    step = pool.max_workers if stop_on_fail else len(jobs) or 1
    for start in range(0, len(jobs), step):
        for key, res in zip(keys[start:start + step], pool.map(jobs[start:start + step])):
            if isinstance(key, int):
                verdicts[key] = _judge_io("stdin", cases[key][2], res, None)
            else:
                for k, rec in zip(calls, _call_records(res, key[1], len(calls))):
                    verdicts[k] = _judge_call(rec, cases[k][2])
        if stop_on_fail and any(not v[0] for v in verdicts.values()):
            break
    passed = sum(v[0] for v in verdicts.values())
    timeouts = sum(v[2] for v in verdicts.values())
    errors = [f"case {k}: {v[1]}" for k, v in sorted(verdicts.items()) if not v[0]][:MAX_ERRORS]
    return TestReport(passed, len(cases), False, timeouts, errors)


def _judge_call(rec: dict, want) -> tuple[bool, str, bool]:
    """(passed, why not, timed out) for one call-based case from its record, decided here in the parent."""
    if "ok" not in rec:
        why = rec.get("missing") or ("timeout" if "timeout" in rec else ": ".join(rec.get("err", ["error"])))
        return False, why, "timeout" in rec
    got = codec.decode(rec["ok"])
    ok = _same(got, want) or (type(want) is list and len(want) == 1 and _same(got, want[0]))  # APPS wraps outputs
    return (True, "", False) if ok else (False, "wrong result", False)


def _judge_io(mode: str, want, res: RunResult, nonce) -> tuple[bool, str, bool]:
    """(passed, why not, timed out) for one io case, decided here in the parent."""
    if mode == "stdin":
        if res.status != "ok":
            return False, res.reason, res.timed_out
        return (True, "", False) if _normalize_output(res.stdout) == _normalize_output(str(want)) else (False, "wrong output", False)
    return _judge_call(_call_records(res, nonce, 1)[0], want)


def _run_assert(program: str, tree: ast.Module, spec: dict, pool: SandboxPool, timeout_s: float, max_tests: int,
                stop_on_fail: bool = False):
    try:
        steps, bind = assert_plan(spec, tree, max_tests)
    except SyntaxError as e:
        raise ValueError(f"the test code does not parse: {e}") from None
    n_cases = sum(k == "case" for k, _ in steps)
    table: dict[str, dict] = {}
    cases = []
    for rnd in range(MAX_ROUNDS):
        nonce = secrets.token_hex(16)
        res = pool.map([{"code": replay_program(nonce, steps, bind, table), "timeout_s": max(10.0, 2 * timeout_s),
                         "memory_mb": MEMORY_MB}])[0]
        recs = [r for r in parse_records(res.stdout, nonce) if "cases" in r]
        if res.status != "ok" or not recs:
            why = f"{res.reason} {res.stderr[-300:]}".strip()
            if rnd == 0:  # nothing of the program was involved yet: the test code fails on its own
                raise ValueError(f"the test code cannot run: {why}")
            return TestReport(0, n_cases, False, 0, [f"the test harness failed on the program's results: {why}"])
        if recs[-1].get("broken"):
            raise ValueError(f"the test code cannot run: its set-up fails before calling the program: {recs[-1]['broken']}")
        cases, new = recs[-1]["cases"], [c for c in recs[-1]["new"] if c[1] not in table]
        if not new:
            break
        by_case: dict[int, list] = {}
        for case, key, name, a, k in new:
            by_case.setdefault(case, []).append((key, [name, a, k]))
        if _call_round(program, list(by_case.values()), table, pool, timeout_s, stop_on_fail):
            return TestReport(0, n_cases, False, 1, ["a call ran out of time; stopped (all-or-nothing reward)"])
    passed = sum(c["v"] == "pass" for c in cases)
    errors = [f"case {i}: " + (c["why"] or "") if c["v"] == "fail" else f"case {i}: undecided after {MAX_ROUNDS} rounds"
              for i, c in enumerate(cases) if c["v"] != "pass"][:MAX_ERRORS]
    return TestReport(passed, len(cases), False, sum(bool(c.get("timeout")) for c in cases), errors)


def _call_round(program, groups, table, pool: SandboxPool, timeout_s, stop_on_fail) -> bool:
    """Run each case's new calls (one sandbox run per case) into `table`; with `stop_on_fail`, stop at
    the first batch in which a call timed out (its case cannot pass) and return True."""
    step = pool.max_workers if stop_on_fail else max(1, len(groups))
    for start in range(0, len(groups), step):
        chunk = groups[start:start + step]
        nonces = [secrets.token_hex(16) for _ in chunk]
        jobs = [{"code": candidate_program(nc, [c for _, c in g]), "files": {"solution.py": program},
                 "timeout_s": timeout_s, "memory_mb": MEMORY_MB} for nc, g in zip(nonces, chunk)]
        timed_out = False
        for g, nc, r in zip(chunk, nonces, pool.map(jobs)):
            for (key, _), rec in zip(g, _call_records(r, nc, len(g))):
                table[key] = rec
                timed_out |= "timeout" in rec
        if timed_out and stop_on_fail:
            return True
    return False


def _parse(program: str) -> ast.Module | None:
    try:
        return ast.parse(program) if compiles(program) else None
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _with_prompt(program: str, spec: dict) -> str:
    """HumanEval: prompt + program when the program alone does not define the entry point (a completion
    that continues the prompt's signature and docstring) and the two compile together."""
    if spec.get("prompt") and spec.get("entry"):
        tree = _parse(program)
        if tree is None or spec["entry"] not in _top_names(tree):
            joined = spec["prompt"].rstrip("\n") + "\n" + program
            if compiles(joined):
                return joined
    return program


def _run_tests(program, tests, sandbox, timeout_s, max_tests, stop_on_fail=False) -> TestReport:
    spec = normalize_tests(tests)
    program = _with_prompt(program, spec)
    tree = _parse(program)
    if tree is None:
        if spec["kind"] == "io":
            total = len(spec["cases"][:max_tests])
        else:
            try:
                total = sum(k == "case" for k, _ in assert_plan(spec, ast.Module(body=[], type_ignores=[]), max_tests)[0])
            except SyntaxError:
                total = 0
        return TestReport(0, total, True, 0, ["the program does not compile"])
    pool = sandbox if isinstance(sandbox, SandboxPool) else SandboxPool(sandbox or _default_sandbox(), _workers())
    if spec["kind"] == "io":
        return _run_io(program, spec, pool, timeout_s, max_tests, stop_on_fail)
    return _run_assert(program, tree, spec, pool, timeout_s, max_tests, stop_on_fail)


def run_tests(program: str, tests: dict, sandbox: Sandbox | None = None, timeout_s: float = 5.0,
              max_tests: int = 32) -> TestReport:
    """Run `program` against `tests` (a format of the module docstring), at most `max_tests` cases,
    each case in its own sandbox run limited to `timeout_s`. `sandbox`: a `Sandbox` or a `SandboxPool`
    (default: the one `set_code_sandbox` set, else `LocalSandbox()`). Raises ValueError for tests it
    cannot read, `SandboxUnavailable` when no sandbox can run."""
    return _run_tests(program, tests, sandbox, timeout_s, max_tests)


# ---------------------------------------------------------------- the reward
_SANDBOX: Sandbox | None = None
_SANDBOX_LOCK = threading.Lock()
_STATS_LOCK = threading.Lock()
_STATS = {"completions": 0, "no_program": 0, "compile_errors": 0, "cases": 0, "cases_passed": 0, "solved": 0,
          "timeouts": 0}


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def set_code_sandbox(sandbox: Sandbox | None) -> None:
    """The sandbox `code_reward` (and `run_tests` without one) uses; None: back to LocalSandbox()."""
    global _SANDBOX
    with _SANDBOX_LOCK:
        _SANDBOX = sandbox


def _default_sandbox() -> Sandbox:
    global _SANDBOX
    with _SANDBOX_LOCK:
        if _SANDBOX is None:
            from posttrain.sandbox import LocalSandbox

            _SANDBOX = LocalSandbox()
        return _SANDBOX


class _Bounded:
    """A Sandbox that lets at most `n` runs at once, however many threads call it."""

    def __init__(self, sandbox: Sandbox, n: int):
        self.sandbox, self.sem = sandbox, threading.BoundedSemaphore(n)

    def run(self, **job) -> RunResult:
        with self.sem:
            return self.sandbox.run(**job)


def code_reward_stats(reset: bool = False) -> dict[str, float]:
    """Counts since the last reset: completions scored, without a program, that do not compile, that
    pass every case; test cases run / passed / timed out, and their ratios (``code/...`` keys)."""
    with _STATS_LOCK:
        s = dict(_STATS)
        if reset:
            for k in _STATS:
                _STATS[k] = 0
    out = {f"code/{k}": float(v) for k, v in s.items()}
    out["code/pass_rate"] = s["cases_passed"] / s["cases"] if s["cases"] else 0.0
    out["code/solved_rate"] = s["solved"] / s["completions"] if s["completions"] else 0.0
    return out


def _count(report: TestReport | None, no_program: bool = False) -> None:
    with _STATS_LOCK:
        _STATS["completions"] += 1
        _STATS["no_program"] += no_program
        if report is not None:
            _STATS["compile_errors"] += report.compile_error
            _STATS["cases"] += report.total
            _STATS["cases_passed"] += report.passed
            _STATS["solved"] += report.all_passed
            _STATS["timeouts"] += report.timeouts


_TEST_KEYS = ("prompt", "test_setup_code", "test_imports", "inputs", "outputs", "test_cases", "func_name")


def code_reward(prompts, completions, test=None, entry_point=None, input_output=None, fn_name=None,
                test_list=None, partial: bool = False, timeout_s: float = 5.0, **columns) -> list[float | None]:
    """1.0 when the completion's program passes every test case, else 0.0 (``partial=True``: the
    fraction passed); None when it has no program or the row no tests. Columns as in the module
    docstring; counts go to `code_reward_stats`. The sandboxed runs of a batch share `os.cpu_count()`
    (at most 8) slots. Without ``partial`` a completion stops at its first failing stdin/call case or
    at its first timed-out call (the score is 0 either way), so its case counts are lower bounds.
    A row whose test code fails on its own raises ValueError (counted as an error by `combine_rewards`)."""
    n = len(completions)
    named = {"test": test, "entry_point": entry_point, "input_output": input_output, "fn_name": fn_name,
             "test_list": test_list, **{k: columns[k] for k in _TEST_KEYS if k in columns}}
    named = {k: v for k, v in named.items() if v is not None}
    for k, v in named.items():
        if len(v) != n:
            raise ValueError(f"column '{k}' has {len(v)} values for {n} completions")
    pool = SandboxPool(_Bounded(_default_sandbox(), _workers()), _workers())

    def score(i: int) -> float | None:
        tests = {k: v[i] for k, v in named.items() if v[i] is not None and v[i] != ""}
        if not tests.keys() & {"test", "test_list", "input_output", "inputs", "test_cases"}:
            return None
        program = extract_program(completions[i])
        prompt = tests.get("prompt")
        if program is None and isinstance(prompt, str) and tests.get("entry_point") and compiles(prompt + completions[i]):
            program = completions[i]  # a bare continuation of HumanEval's code prompt
        if program is None:
            _count(None, no_program=True)
            return None
        report = _run_tests(program, tests, pool, timeout_s, 32, stop_on_fail=not partial)
        _count(report)
        if report.total == 0:
            return 0.0
        return report.passed / report.total if partial else float(report.all_passed)

    if n <= 1:
        return [score(i) for i in range(n)]
    with ThreadPoolExecutor(min(n, 2 * _workers()), thread_name_prefix="posttrain-code-reward") as ex:
        return list(ex.map(score, range(n)))
