"""Write a Python function from input/output examples, checked by running it in the sandbox.

Prompt: the values of an unknown integer function at x = 0, 1, ..., ``shown`` - 1::

    f(0)=2 f(1)=5 f(2)=8

Completion: a one-line function, here ``def f(x): return x*3+2`` (the reference; any program whose
``f`` gives the right values passes). Rows carry HumanEval's columns, ``test`` (a
``def check(candidate): assert candidate(x) == y ...`` function over ``tests`` inputs that the prompt
does not show, drawn from -9..40) and ``entry_point`` (``f``), so ``--rl.reward code``
(`posttrain.rewards.code.code_reward`) scores them as it scores HumanEval; ``answer`` is the ``test``
code too, and `Code.verify` runs the completion against it through `code_reward`, i.e. in a sandboxed
subprocess, never in the caller's process.

The function families grow with ``level`` (a >= 2 and b >= 1 up to ``max_const``):

| level | adds                       |
|-------|----------------------------|
| 1     | x+b, x-b, x*a              |
| 2     | x*a+b, x*a-b (the default) |
| 3     | x*x+b, b-x, x*x*a          |

Every family gives distinct values on 0, 1, 2 (so ``shown`` >= 3 determines the function). The held-out
split is by function (a hash of its reference expression), so a held-out function is never trained
on, whatever its prompt. With the default options there are 819 functions, 98 of them held out.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

from posttrain.config import ConfigError
from posttrain.tasks.base import TASKS, Task, in_eval_split

ENTRY_POINT = "f"
TEST_INPUTS = range(-9, 41)

_FAMILIES = {  # level -> [(expression template, uses a, uses b)]
    1: [("x+{b}", False, True), ("x-{b}", False, True), ("x*{a}", True, False)],
    2: [("x*{a}+{b}", True, True), ("x*{a}-{b}", True, True)],
    3: [("x*x+{b}", False, True), ("{b}-x", False, True), ("x*x*{a}", True, False)],
}


def program(expr: str) -> str:
    """The one-line function for an expression in x."""
    return f"def {ENTRY_POINT}(x): return {expr}"


def check_code(cases: list[tuple[int, int]]) -> str:
    """HumanEval-style ``check(candidate)`` asserting candidate(x) == y for every (x, y)."""
    return "def check(candidate):\n" + "".join(f"    assert candidate({x}) == {y}\n" for x, y in cases)


def _value(expr: str, x: int) -> int:
    """The reference expression at x (our own generated expression over +, -, * only; never a completion)."""
    return eval(expr, {"__builtins__": {}}, {"x": x})  # noqa: S307  (generated, not model text)


@dataclass
class Code(Task):
    level: int = 2
    max_const: int = 20
    shown: int = 3
    tests: int = 4

    def functions(self) -> list[str]:
        """Every reference expression of the task, in a fixed order."""
        out = []
        for lv in range(1, self.level + 1):
            for template, uses_a, uses_b in _FAMILIES[lv]:
                for a in range(2, self.max_const + 1) if uses_a else [0]:
                    for b in range(1, self.max_const + 1) if uses_b else [0]:
                        out.append(template.format(a=a, b=b))
        return out

    def _split(self, held_out: bool) -> list[str]:
        funcs = [e for e in self.functions() if in_eval_split(f"code:{e}") == held_out]
        if not funcs:
            raise ConfigError(f"task 'code': no {'held-out' if held_out else 'training'} functions at level={self.level}, "
                              f"max_const={self.max_const}; raise max_const")
        return funcs

    def _problems(self, n: int, seed: int, held_out: bool) -> list[str]:
        """`n` functions of the split: passes over it, each in an order drawn from `seed`, so that no
        function repeats before every one has come (200 held-out rows are 200 distinct functions
        when the split has that many)."""
        funcs, rng, out = self._split(held_out), random.Random(seed), []
        while len(out) < n:
            order = funcs[:]
            rng.shuffle(order)
            out.extend(order[: n - len(out)])
        return out

    def prompt_text(self, expr: str) -> str:
        return " ".join(f"{ENTRY_POINT}({x})={_value(expr, x)}" for x in range(self.shown))

    def test_cases(self, expr: str) -> list[tuple[int, int]]:
        """The held-out cases of one function: `tests` inputs not in the prompt, fixed by the function."""
        rng = random.Random(f"code-test:{expr}")
        xs = rng.sample([x for x in TEST_INPUTS if not 0 <= x < self.shown], self.tests)
        return [(x, _value(expr, x)) for x in xs]

    def test_code(self, expr: str) -> str:
        return check_code(self.test_cases(expr))

    def _row(self, expr: str) -> dict:
        """HumanEval-style ``test`` + ``entry_point`` columns, and the same cases call-based in
        ``input_output`` (APPS's ``fn_name`` form: one sandbox run for all of a program's cases
        instead of record / replay; `code_reward(..., input_output=...)` uses it)."""
        cases = self.test_cases(expr)
        test = check_code(cases)
        io = json.dumps({"fn_name": ENTRY_POINT, "inputs": [[x] for x, _ in cases], "outputs": [y for _, y in cases]})
        return {"prompt": [{"role": "user", "content": self.prompt_text(expr)}], "answer": test,
                "test": test, "entry_point": ENTRY_POINT, "input_output": io}

    def sft_rows(self, n, seed=0, held_out=False):
        return [{**self._row(e), "completion": [{"role": "assistant", "content": program(e)}]}
                for e in self._problems(n, seed, held_out)]

    def rl_rows(self, n, seed=1):
        return [self._row(e) for e in self._problems(n, seed, held_out=False)]

    def eval_rows(self, n, seed=2):
        return [self._row(e) for e in self._problems(n, seed, held_out=True)]

    def preference_rows(self, n: int, seed: int = 3, held_out: bool = False) -> list[dict]:
        """(prompt, chosen, rejected): the reference against the same function with one constant off by one."""
        rng = random.Random(seed)
        rows = []
        for e in self._problems(n, seed, held_out):
            wrong = _near_miss(e, rng)
            rows.append({**self._row(e), "chosen": [{"role": "assistant", "content": program(e)}],
                         "rejected": [{"role": "assistant", "content": program(wrong)}]})
        return rows

    def extract(self, completion: str) -> str | None:
        """The program in a completion (a fenced block, else the text), None when there is none."""
        from posttrain.rewards.code import extract_program

        return extract_program(completion)

    def verify(self, completion: str, answer: str) -> bool:
        """Does the completion's program pass the test code `answer` (run in the sandbox)?"""
        from posttrain.rewards.code import code_reward

        score = code_reward([""], [completion], test=[answer], entry_point=[ENTRY_POINT])[0]
        return score is not None and score >= 1.0


def _near_miss(expr: str, rng: random.Random) -> str:
    """`expr` with one of its constants moved by one (never onto the same function)."""
    import re

    spans = [m.span() for m in re.finditer(r"\d+", expr)]
    a, b = rng.choice(spans)
    value = int(expr[a:b])
    new = value + 1 if value <= 2 or rng.random() < 0.5 else value - 1
    return expr[:a] + str(new) + expr[b:]


@TASKS.register("code")
def _make_code(level: int = 2, max_const: int = 20, shown: int = 3, tests: int = 4) -> Code:
    if level not in _FAMILIES:
        raise ConfigError(f"task 'code': level must be one of {sorted(_FAMILIES)}, got {level}")
    if max_const < 2:
        raise ConfigError(f"task 'code': max_const must be >= 2, got {max_const}")
    if shown < 3:
        raise ConfigError(f"task 'code': shown must be >= 3 (fewer values do not determine the function), got {shown}")
    if not 1 <= tests <= len(TEST_INPUTS) - shown:
        raise ConfigError(f"task 'code': tests must be in 1..{len(TEST_INPUTS) - shown}, got {tests}")
    return Code(name="code", level=level, max_const=max_const, shown=shown, tests=tests)
