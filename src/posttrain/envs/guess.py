"""The guessing game (game style): find a number in [1, high] from "higher" / "lower" replies.

Offline and seeded: ``reset(seed)`` draws the number with ``random.Random(seed)``. Every model turn
is one guess (the first integer in the text); a turn without an integer is a wasted guess and is
told so. Reward 1 at the turn that names the number within ``max_guesses`` guesses, else 0 (the
episode is truncated after the last allowed guess). The reward comes with the step, so the
per-turn reward stream carries it at the winning turn's last token.
"""
from __future__ import annotations

import random
import re

from posttrain.envs.base import register_env

_INT = re.compile(r"-?\d+")


@register_env("guess", "guess a number in [1, high] from higher / lower feedback (reward 1 on success)")
class GuessEnv:
    def __init__(self, high: int = 16, max_guesses: int = 5):
        if high < 1 or max_guesses < 1:
            raise ValueError("guess: high and max_guesses must be >= 1")
        self.high, self.max_guesses = high, max_guesses
        self.target, self.guesses = 1, 0

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.target = random.Random(seed).randint(1, self.high)
        self.guesses = 0
        obs = (f"I am thinking of a number between 1 and {self.high}. You have {self.max_guesses} guesses. "
               "Reply with one number; I will say higher or lower.")
        return obs, {"target": self.target}

    def step(self, action: str):
        self.guesses += 1
        m = _INT.search(action)
        last = self.guesses >= self.max_guesses
        if m is None:
            obs = f"Please reply with a whole number between 1 and {self.high}."
            return (obs if not last else f"Out of guesses. It was {self.target}."), 0.0, False, last, {}
        guess = int(m.group())
        if guess == self.target:
            return f"Correct! It was {self.target}.", 1.0, True, False, {"guesses": self.guesses}
        if last:
            return f"Out of guesses. It was {self.target}.", 0.0, False, True, {}
        return ("Higher." if guess < self.target else "Lower."), 0.0, False, False, {}
