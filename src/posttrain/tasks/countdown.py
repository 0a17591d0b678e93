"""Countdown: reach a target with each of 3-4 given numbers used once and + - * / (TinyZero layout).

Problems are generated from a random expression over the numbers, so each has a known solution
(used as the SFT completion). Rows carry TinyZero's `nums` and `target` columns besides
`answer` (``target|n1 n2 n3``), and the verifier is `posttrain.rewards.countdown`'s.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from posttrain.rewards.countdown import check_countdown, extract_equation
from posttrain.tasks.base import TASKS, Task, in_eval_split

_OPS = "+-*"


def _random_solution(rng: random.Random, nums: list[int]) -> tuple[str, int]:
    order = nums[:]
    rng.shuffle(order)
    expr, value = str(order[0]), order[0]
    for x in order[1:]:
        op = rng.choice(_OPS)
        if op == "-" and value < x:
            expr, value = f"{x}-({expr})" if " " not in expr and ("+" in expr or "-" in expr) else f"{x}-{expr}", x - value
            continue
        expr = f"({expr}){op}{x}" if op == "*" and ("+" in expr or "-" in expr) else f"{expr}{op}{x}"
        value = value + x if op == "+" else value - x if op == "-" else value * x
    return expr, value


def _near_miss(expr: str, answer: str, verify, rng: random.Random) -> str:
    """`expr` with one operator swapped or one number moved by one, chosen so it fails `verify`."""
    ops = [i for i, ch in enumerate(expr) if ch in "+-*"]
    nums = [m.span() for m in re.finditer(r"\d+", expr)]
    for _ in range(20):
        if ops and rng.random() < 0.5:
            i = rng.choice(ops)
            cand = expr[:i] + rng.choice([o for o in "+-*" if o != expr[i]]) + expr[i + 1:]
        else:
            a, b = rng.choice(nums)
            cand = expr[:a] + str(max(1, int(expr[a:b]) + rng.choice((-1, 1)))) + expr[b:]
        if cand != expr and not verify(cand, answer):
            return cand
    return f"{expr}+1"


@dataclass
class Countdown(Task):
    count: int = 3
    max_number: int = 20

    def _problems(self, n, seed, held_out):
        rng = random.Random(seed)
        out = []
        while len(out) < n:
            nums = [rng.randint(1, self.max_number) for _ in range(self.count)]
            expr, target = _random_solution(rng, nums)
            if target <= 0 or in_eval_split(f"{sorted(nums)}->{target}") != held_out:
                continue
            out.append((nums, target, expr))
        return out

    def _prompt(self, nums, target):
        return [{"role": "user", "content": f"{' '.join(map(str, nums))} -> {target}"}]

    def _row(self, nums, target):
        return {"prompt": self._prompt(nums, target), "answer": f"{target}|{' '.join(map(str, nums))}",
                "nums": nums, "target": target}

    def sft_rows(self, n, seed=0, held_out=False):
        return [
            {**self._row(nums, t), "completion": [{"role": "assistant", "content": e}]}
            for nums, t, e in self._problems(n, seed, held_out)
        ]

    def rl_rows(self, n, seed=1):
        return [self._row(nums, t) for nums, t, _ in self._problems(n, seed, False)]

    def eval_rows(self, n, seed=2):
        return [self._row(nums, t) for nums, t, _ in self._problems(n, seed, True)]

    def preference_rows(self, n: int, seed: int = 3, held_out: bool = False) -> list[dict]:
        """(prompt, chosen, rejected) rows: the known solution against a near miss that fails the
        verifier (one operator changed, or one number off by one)."""
        rng = random.Random(seed)
        rows = []
        for nums, t, expr in self._problems(n, seed, held_out):
            row = self._row(nums, t)
            wrong = _near_miss(expr, row["answer"], self.verify, rng)
            rows.append({**row, "chosen": [{"role": "assistant", "content": expr}],
                         "rejected": [{"role": "assistant", "content": wrong}]})
        return rows

    def verify(self, completion: str, answer: str) -> bool:
        target, _, nums = answer.partition("|")
        eq = extract_equation(completion)
        return eq is not None and check_countdown(eq, nums.split(), int(target))


@TASKS.register("countdown")
def _make_countdown(count: int = 3, max_number: int = 20) -> Countdown:
    return Countdown(name="countdown", count=count, max_number=max_number)
