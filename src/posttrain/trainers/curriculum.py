"""Online curriculum for RL: a prompt sampler plus admission gates, with refill.

The shape follows prime-rl's buffer: a *sampler* decides which prompts are rolled out, *gates* decide
which sampled groups are admitted into the batch, and the trainer refills (samples more prompts, at
most ``rl.max_refill_rounds`` extra rounds) until ``prompts_per_step`` groups are admitted.

Samplers (``--rl.sampler``):
- ``uniform``: shuffled passes over the prompts (`DataOrder`), today's behaviour, bit for bit.
- ``pass_rate``: tracks each prompt's recent pass rate (an exponential moving average of its groups'
  mean reward, ``rl.curriculum_ema``; unseen prompts start at ``rl.curriculum_prior``) and draws prompts
  without replacement with weight ``p (1 - p) + rl.curriculum_floor``: the variance of a Bernoulli
  reward, largest for prompts the policy solves half of the time, i.e. the learnable ones
  ("learnability" sampling, Tzannetos et al. 2023; Foster and Foerster 2025). Prompts that are always
  solved or never solved keep the floor weight, so they are revisited and their estimate can move.

Gates (a group is admitted when every active gate admits it):
- zero variance (DAPO's dynamic sampling, Yu et al. 2025, on with the ``dapo`` preset or
  ``--rl.dynamic_sampling true``): the group's reward spread (max - min) must exceed
  ``rl.min_reward_spread`` (0: DAPO's exact "not all equal"; a tolerance ignores float noise and tiny
  shaping terms such as a length penalty);
- reward band (``--rl.reward_band lo,hi``): the group's mean reward must lie in [lo, hi] (Polaris-style
  filtering of too-easy / too-hard prompts, applied online).

Departures: DAPO's paper over-samples a fixed 3x batch and filters; here refill samples exactly the
missing number of groups per round (fewer wasted rollouts, the same admitted batch). verl's curriculum
sampler hook orders prompts offline by a score; the pass-rate sampler here is online and its state
(pass rates, draw counts, generator) is checkpointed, so a resumed run samples exactly what the
straight run would.
"""
from __future__ import annotations

import torch

from posttrain.trainers.common import DataOrder


class UniformSampler:
    """Shuffled passes over `n` prompts; `observe` is a no-op."""

    def __init__(self, n: int, seed: int):
        self.order = DataOrder(n, seed)

    def take(self, k: int) -> list[int]:
        return self.order.take(k)

    def observe(self, idx: list[int], means: list[float]) -> None:
        pass

    def state(self) -> dict:
        return self.order.state()

    def load_state(self, state: dict) -> None:
        self.order = DataOrder(self.order.n, self.order.seed, **state)


class PassRateSampler:
    """Draw prompts with weight p(1-p) + floor, p a moving average of each prompt's pass rate."""

    def __init__(self, n: int, seed: int, ema: float = 0.5, prior: float = 0.5, floor: float = 0.02):
        self.n, self.ema, self.floor = n, ema, floor
        self.pass_rate = torch.full((n,), float(prior), dtype=torch.float64)
        self.seen = torch.zeros(n, dtype=torch.long)
        self.gen = torch.Generator().manual_seed(seed * 100003 + 17)

    def weights(self) -> torch.Tensor:
        p = self.pass_rate
        return p * (1 - p) + self.floor

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:  # without replacement within a draw; more than n prompts wraps around
            m = min(k - len(out), self.n)
            out += torch.multinomial(self.weights(), m, replacement=False, generator=self.gen).tolist()
        return out

    def observe(self, idx: list[int], means: list[float]) -> None:
        for i, r in zip(idx, means):
            a = 1.0 if self.seen[i] == 0 else self.ema  # the first observation replaces the prior
            self.pass_rate[i] = (1 - a) * self.pass_rate[i] + a * min(1.0, max(0.0, float(r)))
            self.seen[i] += 1

    def state(self) -> dict:
        return {"pass_rate": self.pass_rate.clone(), "seen": self.seen.clone(), "generator": self.gen.get_state()}

    def load_state(self, state: dict) -> None:
        if "pass_rate" not in state:
            raise ValueError("the checkpoint was written with rl.sampler uniform; resume with --rl.sampler uniform")
        self.pass_rate, self.seen = state["pass_rate"].clone(), state["seen"].clone()
        self.gen.set_state(state["generator"])


def make_sampler(kind: str, n: int, seed: int, ema: float = 0.5, prior: float = 0.5, floor: float = 0.02):
    if kind == "uniform":
        return UniformSampler(n, seed)
    if kind == "pass_rate":
        return PassRateSampler(n, seed, ema, prior, floor)
    raise ValueError(f"unknown rl.sampler '{kind}' (uniform | pass_rate)")


def admit(rewards: torch.Tensor, zero_variance: bool, min_spread: float = 0.0,
          band: tuple[float, ...] = ()) -> str | None:
    """None when a group with these rewards is admitted, else the name of the gate that refused it."""
    if zero_variance and float(rewards.max() - rewards.min()) <= min_spread:
        return "zero_variance"
    if band:
        lo, hi = band
        mean = float(rewards.mean())
        if not lo <= mean <= hi:
            return "reward_band"
    return None
