"""Multi-digit addition, with an optional step-by-step (column) scratchpad.

Prompt ``123+456``; plain completion ``579``; scratchpad completion, one step per line from the
units column up, then the answer line::

    3+6+0=9 c0
    2+5+0=7 c0
    1+4+0=5 c0
    #### 579
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from posttrain.tasks.base import TASKS, Task, in_eval_split


def scratchpad_steps(a: int, b: int) -> list[str]:
    da, db = str(a)[::-1], str(b)[::-1]
    carry, steps = 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s % 10} c{s // 10}")
        carry = s // 10
    steps.append(f"#### {a + b}")
    return steps


_ANSWER = re.compile(r"####\s*(-?\d+)")


@dataclass
class Addition(Task):
    digits: int = 3
    scratchpad: int = 0

    def _problems(self, n: int, seed: int, held_out: bool):
        rng = random.Random(seed)
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        out = []
        while len(out) < n:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if in_eval_split(f"{a}+{b}") == held_out:
                out.append((a, b))
        return out

    def completion(self, a: int, b: int) -> str:
        return "\n".join(scratchpad_steps(a, b)) if self.scratchpad else str(a + b)

    def _prompt(self, a: int, b: int):
        return [{"role": "user", "content": f"{a}+{b}"}]

    def sft_rows(self, n, seed=0):
        return [
            {"prompt": self._prompt(a, b), "completion": [{"role": "assistant", "content": self.completion(a, b)}], "answer": str(a + b)}
            for a, b in self._problems(n, seed, held_out=False)
        ]

    def rl_rows(self, n, seed=1):
        return [{"prompt": self._prompt(a, b), "answer": str(a + b)} for a, b in self._problems(n, seed, held_out=False)]

    def eval_rows(self, n, seed=2):
        return [{"prompt": self._prompt(a, b), "answer": str(a + b)} for a, b in self._problems(n, seed, held_out=True)]

    def extract(self, completion: str) -> str | None:
        m = _ANSWER.search(completion)
        if m:
            return m.group(1)
        text = completion.strip()
        return text if re.fullmatch(r"-?\d+", text) else None

    def verify(self, completion: str, answer: str) -> bool:
        return self.extract(completion) == str(answer).strip()


@TASKS.register("addition")
def _make_addition(digits: int = 3, scratchpad: int = 0) -> Addition:
    return Addition(name="addition", digits=digits, scratchpad=scratchpad)
