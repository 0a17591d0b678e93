"""Multi-digit addition, with an optional step-by-step (column) scratchpad.

Prompt ``123+456``; plain completion ``579``; scratchpad completion, one step per line from the
units column up, then the answer line::

    3+6+0=9 c0
    2+5+0=7 c0
    1+4+0=5 c0
    #### 579

``scratchpad=2`` adds the running result to every line, so that the answer line copies the line
above instead of reading the digits back in reverse (which is what a small model gets wrong)::

    3+6+0=9 c0 -> 9
    2+5+0=7 c0 -> 79
    1+4+0=5 c0 -> 579
    #### 579

``shuffle=1`` writes each column's three addends (the two digits and the carry) in a random order,
so that one problem has many right solutions (``0+3+6=9 c0 -> 9``, ``6+0+3=9 c0 -> 9``, ...): a
model trained on it samples different paths to the same answer, the premise of self-consistency
(Wang et al. 2023), whereas the fixed order leaves one right text per problem.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from posttrain.config import ConfigError
from posttrain.tasks.base import TASKS, Task, in_eval_split


def scratchpad_steps(a: int, b: int, drop_carry_at: int = -1, slip_digit_at: int = -1, running: bool = False,
                     order: random.Random | None = None) -> list[str]:
    """Column steps. Plausible slips for rejected solutions: `drop_carry_at` = i writes column i's
    carry as 0; `slip_digit_at` = i writes column i's digit one too high (mod 10). `running` appends
    the result so far (the final carry included on the last column); `order`, a random generator,
    shuffles each column's addends."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, steps, digits = 0, [], []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        out = 0 if i == drop_carry_at else s // 10
        digit = (s + 1) % 10 if i == slip_digit_at else s % 10
        terms = [x, y, carry]
        if order is not None:
            order.shuffle(terms)
        steps.append(f"{'+'.join(map(str, terms))}={digit} c{out}")
        digits.append(digit)
        carry = out
        if running:
            last = i == max(len(da), len(db)) - 1
            steps[-1] += f" -> {carry if last and carry else ''}{''.join(map(str, digits[::-1]))}"
    total = int((str(carry) if carry else "") + "".join(map(str, digits[::-1])))
    steps.append(f"#### {total}")
    return steps


def wrong_sum(a: int, b: int, rng: random.Random) -> int:
    """A plausible wrong a+b: a dropped carry, one digit off by one, or two neighbouring digits swapped."""
    right = a + b
    no_carry = int("".join(str((int(x) + int(y)) % 10) for x, y in zip(str(a).zfill(len(str(b))), str(b).zfill(len(str(a))))))
    text = str(right)
    candidates = [no_carry] if no_carry != right and len(str(no_carry)) >= len(text) - 1 else []
    i = rng.randrange(len(text))
    d = int(text[i]) + rng.choice((-1, 1))
    if 0 <= d <= 9 and not (i == 0 and d == 0):
        candidates.append(int(text[:i] + str(d) + text[i + 1:]))
    j = rng.randrange(len(text) - 1) if len(text) > 1 else 0
    swapped = text[:j] + text[j + 1 : j + 2] + text[j] + text[j + 2:] if len(text) > 1 else text
    if swapped != text and swapped[0] != "0":
        candidates.append(int(swapped))
    return rng.choice(candidates) if candidates else right + 1


_ANSWER = re.compile(r"####\s*(-?\d+)")


@dataclass
class Addition(Task):
    digits: int = 3
    scratchpad: int = 0
    shuffle: int = 0

    def _problems(self, n: int, seed: int, held_out: bool):
        rng = random.Random(seed)
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        out = []
        while len(out) < n:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if in_eval_split(f"{a}+{b}") == held_out:
                out.append((a, b))
        return out

    def completion(self, a: int, b: int, order: random.Random | None = None) -> str:
        """The right solution; with ``shuffle`` its addend orders come from `order` (a fresh
        generator seeded by the problem when None)."""
        if not self.scratchpad:
            return str(a + b)
        if self.shuffle and order is None:
            order = random.Random(f"{a}+{b}")
        return "\n".join(scratchpad_steps(a, b, running=self.scratchpad == 2, order=order if self.shuffle else None))

    def _prompt(self, a: int, b: int):
        return [{"role": "user", "content": f"{a}+{b}"}]

    def sft_rows(self, n, seed=0, held_out=False):
        order = random.Random(seed + 1)  # with shuffle: the addend orders of every row, one stream
        return [
            {"prompt": self._prompt(a, b), "completion": [{"role": "assistant", "content": self.completion(a, b, order)}],
             "answer": str(a + b)}
            for a, b in self._problems(n, seed, held_out=held_out)
        ]

    def rl_rows(self, n, seed=1):
        return [{"prompt": self._prompt(a, b), "answer": str(a + b)} for a, b in self._problems(n, seed, held_out=False)]

    def eval_rows(self, n, seed=2):
        return [{"prompt": self._prompt(a, b), "answer": str(a + b)} for a, b in self._problems(n, seed, held_out=True)]

    def preference_rows(self, n: int, seed: int = 3, held_out: bool = False) -> list[dict]:
        """(prompt, chosen, rejected) rows: the right solution against a plausible wrong one.

        The wrong sum comes from one of three slips, picked at random: a dropped carry, one digit
        off by one, or two neighbouring digits swapped; with the scratchpad the carry is dropped
        at one column and every later line (and the answer) follows from the slip.
        """
        rng = random.Random(seed)
        rows = []
        for a, b in self._problems(n, seed, held_out):
            chosen = self.completion(a, b, rng if self.shuffle else None)
            rejected = self._wrong_completion(a, b, rng)
            rows.append({"prompt": self._prompt(a, b), "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}], "answer": str(a + b)})
        return rows

    def _wrong_completion(self, a: int, b: int, rng: random.Random) -> str:
        if not self.scratchpad:
            return str(wrong_sum(a, b, rng))
        running, order = self.scratchpad == 2, rng if self.shuffle else None
        right = scratchpad_steps(a, b)
        carries = [i for i, step in enumerate(right[:-1]) if step.endswith("c1")]
        if carries and rng.random() < 0.5:
            return "\n".join(scratchpad_steps(a, b, drop_carry_at=rng.choice(carries), running=running, order=order))
        return "\n".join(scratchpad_steps(a, b, slip_digit_at=rng.randrange(len(right) - 1), running=running, order=order))

    def extract(self, completion: str) -> str | None:
        m = _ANSWER.search(completion)
        if m:
            return m.group(1)
        text = completion.strip()
        return text if re.fullmatch(r"-?\d+", text) else None

    def verify(self, completion: str, answer: str) -> bool:
        return self.extract(completion) == str(answer).strip()


@TASKS.register("addition")
def _make_addition(digits: int = 3, scratchpad: int = 0, shuffle: int = 0) -> Addition:
    if shuffle and not scratchpad:
        raise ConfigError("addition: shuffle=1 needs a scratchpad (scratchpad=1 or 2): it orders the scratchpad's addends")
    return Addition(name="addition", digits=digits, scratchpad=scratchpad, shuffle=shuffle)
