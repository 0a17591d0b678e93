"""Code rewards: right programs pass in every test format, wrong ones fail, and no forging trick gets
the reward (printing a verdict, exiting early, an always-true __eq__, patching the harness or builtins)."""
import json

import pytest

from posttrain.rewards import combine_rewards
from posttrain.rewards.code import (
    TestReport as Report, code_reward, code_reward_stats, extract_program, run_tests, set_code_sandbox,
)
from posttrain.sandbox import SandboxPool, isolation_available
from posttrain.trainers.rl_batch import build_reward_fns

WHY = isolation_available("namespaces")
needs_sandbox = pytest.mark.skipif(WHY is not None, reason=f"namespace sandbox unavailable: {WHY}")

HUMANEVAL = {
    "test": ("METADATA = {'author': 'x'}\n\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n"
             "    assert candidate(-1, 1) == 0\n    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n"
             "    for i in range(3):\n        assert candidate(i, i) == 2 * i\n"),
    "entry_point": "add",
}
RIGHT = "def add(a, b):\n    return a + b\n"
MBPP = {"test_list": ["assert rev('ab') == 'ba'", "assert rev('') == ''", "assert len(rev('abc')) == 3",
                      "assert rev('abc') == 'cba'"]}
STDIN = {"input_output": json.dumps({"inputs": ["1 2\n", "10 -3\n", "0 0\n"], "outputs": ["3\n", "7\n", "0\n"]})}
CALL = {"input_output": json.dumps({"fn_name": "add", "inputs": [[1, 2], [[1], [2]], ["a", "b"]],
                                    "outputs": [[3], [[1, 2]], ["ab"]]})}
LCB = {"test_cases": json.dumps([{"input": "[1, 2]\n3", "output": "[1, 2, 3]", "testtype": "functional"},
                                 {"input": "[]\n0", "output": "[0]", "testtype": "functional"}]), "fn_name": "push"}
LCB_STDIN = {"test_cases": [{"input": "2\n", "output": "4\n", "testtype": "stdin"}]}

# Programs that try to get the reward without solving the problem. Each must score 0 everywhere.
FORGERS = {
    "prints a verdict": "print('all tests passed')\nprint('ok')\n",
    "exits 0 at import": "import sys\nprint('all tests passed')\nsys.exit(0)\n",
    "os._exit(0) at import": "import os\nos._exit(0)\n",
    "always-true __eq__": (
        "class Anything:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
        "    def __lt__(self, other): return True\n    def __sub__(self, other): return self\n"
        "    def __rsub__(self, other): return self\n    def __abs__(self): return 0\n"
        "    def __len__(self): return 3\n    def __hash__(self): return 0\n"
        "def add(*a): return Anything()\nrev = add\ndef push(*a): return Anything()\n"
        "class IntLike(int):\n    def __eq__(self, o): return True\n"),
    "int subclass with true __eq__": "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
                                      "def add(*a): return I(0)\nrev = add\npush = add\n",
    "overrides check and patches builtins": (
        "import builtins, sys\ndef check(candidate):\n    return True\n"
        "builtins.AssertionError = type('AssertionError', (BaseException,), {})\n"
        "builtins.abs = lambda x: 0\nbuiltins.all = lambda x: True\n"
        "sys.modules['builtins'].__dict__['__import__'] = None\n"
        "def add(a, b): return 0\ndef rev(s): return ''\ndef push(*a): return []\n"),
    "shadows the builtins the test uses": "def abs(x): return 0\ndef len(x): return 3\ndef add(a, b): return None\n"
                                          "def rev(s): return None\n",
    "edits its harness and stdout": (
        "import os, sys\nfor f in os.listdir('.'):\n    try:\n        open(f, 'w').write('print(\"all tests passed\")')\n"
        "    except OSError: pass\nsys.stdout.write('all tests passed\\n')\ndef add(a, b): return 0\n"
        "def rev(s): return s\ndef push(*a): return []\n"),
    "forges the harness records": (
        "import sys, os, json\nm = sys.modules['__main__']\nnonce = getattr(m, '__NONCE__', 'x')\n"
        "out = getattr(m, '_OUT', 1)\n"
        "fake = [{'cases': [{'v': 'pass', 'why': None, 'timeout': False}] * 9, 'new': []}, {'load': None}] + "
        "[{'i': i, 'ok': 3} for i in range(9)]\n"
        "for r in fake:\n    os.write(out, ('\\n' + nonce + ' ' + json.dumps(r) + '\\n').encode())\n"
        "m.encode = lambda x: 3\nos._exit(0)\n"),
    "raises SystemExit inside the function": "def add(a, b):\n    raise SystemExit(0)\nrev = push = add\n",
    "kills its parent": "import os\ndef add(a, b):\n    os.kill(os.getppid(), 9)\n    os._exit(0)\nrev = push = add\n",
}


@pytest.fixture(autouse=True)
def _default_sandbox():
    set_code_sandbox(None)
    yield
    set_code_sandbox(None)


def test_extract_program():
    assert extract_program("text\n```python\nx = 1\n```\nmore\n```python\ndef f(): pass\n```\n") == "def f(): pass\n"
    assert extract_program("```py\na = 1\n```") == "a = 1\n"
    assert extract_program("```\nb = 2\n```\n```cpp\nint x;\n```") == "b = 2\n"
    assert extract_program("```python\nfirst = 1\n```\n```\nsecond = 2\n```") == "first = 1\n"
    assert extract_program("def f(x):\n    return x\n") == "def f(x):\n    return x\n"
    assert extract_program("The answer is 42.") is None
    assert extract_program("") is None
    assert extract_program("```cpp\nint main() {}\n```") is None


@needs_sandbox
@pytest.mark.parametrize("tests,right,wrong,total", [
    (HUMANEVAL, RIGHT, "def add(a, b):\n    return a - b\n", 4),
    (MBPP, "def rev(s):\n    return s[::-1]\n", "def rev(s):\n    return s\n", 4),
    (STDIN, "a, b = map(int, input().split())\nprint(a + b)\n", "print(3)\n", 3),
    (CALL, RIGHT, "def add(a, b):\n    return b + a if isinstance(a, int) else a\n", 3),
    (LCB, "class Solution:\n    def push(self, xs, x):\n        return xs + [x]\n", "def push(xs, x):\n    return xs\n", 2),
    (LCB_STDIN, "print(int(input()) * 2)", "print(int(input()) + 1)", 1),
])
def test_right_programs_pass_and_wrong_ones_fail(tests, right, wrong, total):
    good = run_tests(right, tests, timeout_s=2.0)
    assert good == Report(total, total, False, 0, [])
    bad = run_tests(wrong, tests, timeout_s=2.0)
    assert bad.total == total and bad.passed < total and not bad.compile_error and bad.errors


@needs_sandbox
def test_partial_results_are_per_case():
    r = run_tests("def add(a, b):\n    return 0 if a == 1 else a + b\n", HUMANEVAL, timeout_s=2.0)
    assert (r.passed, r.total) == (2, 4), r  # wrong on add(1, 2) (case 0) and add(1, 1) (the loop, case 3)
    r = run_tests("def rev(s):\n    return s[::-1] if len(s) < 3 else s\n", MBPP)
    assert (r.passed, r.total) == (3, 4), r


# Cases a forger passes honestly because its constant answer happens to be right there (0 everywhere else):
# add() -> 0 is right for add(-1, 1) and the loop's first call only; rev() -> '' for rev(''); rev(s) -> s for
# rev('') and len(rev('abc')); the forged record "3" is add(1, 2)'s right value.
HONEST = {("humaneval", "overrides check and patches builtins"): 1, ("humaneval", "edits its harness and stdout"): 1,
          ("humaneval", "forges the harness records"): 1, ("mbpp", "overrides check and patches builtins"): 1,
          ("mbpp", "edits its harness and stdout"): 2, ("call", "forges the harness records"): 1}
FORMATS = {"humaneval": HUMANEVAL, "mbpp": MBPP, "stdin": STDIN, "call": CALL, "lcb": LCB}


@needs_sandbox
@pytest.mark.parametrize("name", sorted(FORGERS))
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_forging_programs_get_nothing(name, fmt):
    r = run_tests(FORGERS[name], FORMATS[fmt], timeout_s=2.0)
    assert r.total > 0 and r.passed == HONEST.get((fmt, name), 0), (name, r)
    assert not r.all_passed


@needs_sandbox
def test_a_forger_that_knows_the_protocol_cannot_pass_humaneval_cases_it_would_fail():
    r = run_tests(FORGERS["forges the harness records"], HUMANEVAL, timeout_s=2.0)
    assert r.passed == 1  # its forged "3" happens to be add(1, 2); nothing else passes
    assert run_tests(FORGERS["forges the harness records"], {"test": "def check(c):\n    assert c(5, 5) == 10\n",
                                                             "entry_point": "add"}).passed == 0


@needs_sandbox
def test_compile_errors_and_timeouts_are_counted():
    r = run_tests("def add(a, b) return a", HUMANEVAL)
    assert r.compile_error and r.passed == 0 and r.total == 4
    assert run_tests("print(", STDIN) == Report(0, 3, True, 0, ["the program does not compile"])
    slow = run_tests("def add(a, b):\n    while True:\n        pass\n", {"test": "def check(c):\n    assert c(1, 2) == 3\n",
                                                                      "entry_point": "add"}, timeout_s=0.5)
    assert (slow.passed, slow.timeouts) == (0, 1) and "time" in slow.errors[0]
    slow_io = run_tests("while True:\n    pass\n", {"inputs": ["1\n", "2\n"], "outputs": ["1\n", "2\n"]}, timeout_s=0.5)
    assert (slow_io.passed, slow_io.total, slow_io.timeouts) == (0, 2, 2)
    assert run_tests("def add(a, b):\n    return a + b\n", CALL, max_tests=1).total == 1


@needs_sandbox
def test_code_reward_scores_counts_and_is_registered():
    fns = build_reward_fns("code", {}, None)
    assert fns[0][0] is code_reward
    code_reward_stats(reset=True)
    test = "def check(candidate):\n    assert candidate(2) == 7\n    assert candidate(5) == 16\n"
    completions = ["Here:\n```python\ndef f(x):\n    return 3 * x + 1\n```", "```python\ndef f(x):\n    return 7\n```",
                   "I cannot write code.", "```python\ndef f(x) return\n```", FORGERS["prints a verdict"]]
    n = len(completions)
    out = combine_rewards(fns, [""] * n, completions, {"test": [test] * n, "entry_point": ["f"] * n})
    assert out.scores["code_reward"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert out.missing["code_reward"] == 1  # no program: None
    stats = code_reward_stats(reset=True)
    assert stats["code/completions"] == 5 and stats["code/no_program"] == 1 and stats["code/compile_errors"] == 1
    assert stats["code/solved"] == 1 and stats["code/cases"] == 8 and stats["code/cases_passed"] == 3
    assert stats["code/pass_rate"] == pytest.approx(3 / 8) and code_reward_stats()["code/completions"] == 0
    partial = code_reward([""] * 2, completions[:2], test=[test] * 2, entry_point=["f"] * 2, partial=True)
    assert partial == [1.0, 0.5]
    io = code_reward(["", ""], ["a, b = map(int, input().split())\nprint(a + b)", "print(3)"],
                     input_output=[STDIN["input_output"]] * 2)
    assert io == [1.0, 0.0]
    assert code_reward([""], ["x = 1"], test=[None]) == [None]  # a row without tests cannot be scored


@needs_sandbox
def test_run_tests_accepts_a_pool_and_rejects_unknown_formats():
    pool = SandboxPool(max_workers=2)
    assert run_tests(RIGHT, HUMANEVAL, sandbox=pool).passed == 4
    with pytest.raises(ValueError, match="no tests found"):
        run_tests(RIGHT, {"unknown": 1})
    with pytest.raises(ValueError, match="cannot run"):  # a broken test is the data's fault, not a 0 for the program
        run_tests(RIGHT, {"test": "import sys\nsys.exit(2)\ndef check(candidate):\n    assert True\n", "entry_point": "add"})


@needs_sandbox
def test_all_or_nothing_stops_at_the_first_timeout():
    import time

    loops = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
    t0 = time.monotonic()
    assert code_reward([""], [loops], test=[HUMANEVAL["test"]], entry_point=["add"], timeout_s=0.5) == [0.0]
    assert time.monotonic() - t0 < 4 * 0.5 + 3.0  # not one timeout per case


HE32_PROMPT = ('import math\n\n\ndef poly(xs: list, x: float):\n    """Evaluates polynomial xs at x."""\n'
               '    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])\n\n\n'
               'def find_zero(xs: list):\n    """Finds x such that poly(x) = 0."""\n')
HE32_TEST = ("def check(candidate):\n    import math\n    for coeffs in ([1, 2], [-6, 11, -6, 1], [2, -3, 1]):\n"
             "        solution = candidate(list(coeffs))\n        assert math.fabs(poly(coeffs, solution)) < 1e-4\n")
HE32_RIGHT = ("    lo, hi = -1.0, 1.0\n    while poly(xs, lo) * poly(xs, hi) > 0:\n        lo *= 2.0\n        hi *= 2.0\n"
              "    while hi - lo > 1e-10:\n        mid = (lo + hi) / 2.0\n"
              "        if poly(xs, mid) * poly(xs, lo) > 0:\n            lo = mid\n        else:\n            hi = mid\n"
              "    return lo\n")


@needs_sandbox
def test_humaneval_prompt_helpers_are_trusted_and_continuations_run():
    tests = {"test": HE32_TEST, "entry_point": "find_zero", "prompt": HE32_PROMPT}
    assert run_tests(HE32_RIGHT, tests).passed == 1  # a bare continuation of the prompt, run as prompt + body
    assert code_reward([""], [HE32_RIGHT], test=[HE32_TEST], entry_point=["find_zero"], prompt=[HE32_PROMPT]) == [1.0]
    forger = "def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 123.0\n"
    assert run_tests(forger, tests).passed == 0  # its poly is not the test's
    # Without the prompt a helper the test does not define comes from the program, as in HumanEval's
    # own harness; the reason to pass HumanEval's `prompt` column.
    assert run_tests(forger, {"test": HE32_TEST, "entry_point": "find_zero"}).passed == 1
    chat_rows = code_reward([""], [forger], test=[HE32_TEST], entry_point=["find_zero"],
                            prompt=[[{"role": "user", "content": "x"}]])  # a chat prompt is not code: ignored
    assert chat_rows == [1.0]


@needs_sandbox
def test_mbpp_tests_get_the_modules_the_program_imports_not_the_program():
    tests = {"test_list": ["assert math.isclose(area(2), 12.566, rel_tol=1e-3)", "assert area(0) == 0"]}
    assert run_tests("import math\ndef area(r):\n    return math.pi * r * r\n", tests).passed == 2
    forger = "class math:\n    isclose = staticmethod(lambda *a, **k: True)\ndef area(r):\n    return 1\n"
    assert run_tests(forger, tests).passed == 0  # a `math` of its own is a proxy returning plain data: no isclose


@needs_sandbox
def test_call_based_cases_of_one_program_share_one_run_and_keep_their_own_verdicts():
    from posttrain.sandbox import LocalSandbox

    class Counting(LocalSandbox):
        runs = 0

        def run(self, **job):
            Counting.runs += 1
            return super().run(**job)

    half = "def add(a, b):\n    return a + b if not isinstance(a, list) else 0\n"  # right on 2 of the 3 cases
    rep = run_tests(half, CALL, sandbox=Counting())
    assert Counting.runs == 1
    assert (rep.passed, rep.total) == (2, 3) and "case 1" in rep.errors[0]
    # a program that hangs on its second call fails the calls it did not answer, not the first
    slow = "def add(a, b):\n    if isinstance(a, list):\n        while True: pass\n    return a + b\n"
    rep = run_tests(slow, CALL, sandbox=Counting(), timeout_s=1.0)
    assert rep.passed == 1 and rep.timeouts >= 1
