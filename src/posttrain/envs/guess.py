"""The guessing game (game style): find a number in [1, high] from "higher" / "lower" replies.

Offline and seeded: ``reset(seed)`` draws the number with ``random.Random(seed)``. Every model turn
is one guess (the first integer in the text); a turn without an integer is a wasted guess and is
told so. Reward 1 at the turn that names the number within ``max_guesses`` guesses, else 0 (the
episode is truncated after the last allowed guess). The reward comes with the step, so the
per-turn reward stream carries it at the winning turn's last token.

``demonstrate()`` is a scripted player for SFT transcripts (`posttrain.envs.transcripts`): it guesses
uniformly at random among the numbers still consistent with the feedback so far (seeded by the
game's seed). It is deliberately not bisection, which wins every game when ``high < 2**max_guesses``:
with high=16 and 4 guesses the random-consistent player wins about 60% of games (5 guesses: about
80%; high=7 with 3 guesses: about 67%, where bisection always wins), so RL started from imitating
it has room to improve.
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
        self.lo, self.hi = 1, high  # the range the feedback so far allows
        self._demo_rng, self._demo = random.Random(0), None

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.target = random.Random(seed).randint(1, self.high)
        self.guesses, self.lo, self.hi = 0, 1, self.high
        self._demo_rng, self._demo = random.Random(f"demonstrate:{seed}"), None
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
        if guess < self.target:  # what the feedback tells a player (the scripted one keeps track)
            self.lo = max(self.lo, guess + 1)
        else:
            self.hi = min(self.hi, guess - 1)
        if last:
            return f"Out of guesses. It was {self.target}.", 0.0, False, True, {}
        return ("Higher." if guess < self.target else "Lower."), 0.0, False, False, {}

    def demonstrate(self) -> str:
        """A scripted guess: uniform among the numbers consistent with the feedback so far (the same
        guess however often it is asked before the next step)."""
        if self._demo is None or self._demo[0] != self.guesses:
            self._demo = (self.guesses, self._demo_rng.randint(self.lo, max(self.lo, self.hi)))
        return str(self._demo[1])
