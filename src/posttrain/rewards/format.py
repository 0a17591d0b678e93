"""Format reward for think/answer tagged completions (DeepSeek-R1, DeepSeek-AI 2025).

1.0 when the completion is exactly ``<think>...</think>`` followed by ``<answer>...</answer>``
(whitespace allowed between and around them, each tag exactly once, nothing else), else 0.0.

Departure: R1's prompt often already ends in ``<think>``; `make_format_reward(think_in_prompt=True)`
then expects the completion to start inside the think block (no opening ``<think>`` tag).
"""
from __future__ import annotations

import re

__all__ = ["format_reward", "make_format_reward"]

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def make_format_reward(think_in_prompt: bool = False):
    """Build a format reward; see the module docstring."""
    opening = "" if think_in_prompt else r"\s*<think>"
    pattern = re.compile(opening + r"(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
    expected = {t: 1 for t in _TAGS}
    if think_in_prompt:
        expected["<think>"] = 0

    def format_reward(prompts: list[str], completions: list[str], **_columns) -> list[float | None]:
        out: list[float | None] = []
        for c in completions:
            ok = pattern.fullmatch(c) is not None and all(c.count(t) == k for t, k in expected.items())
            out.append(1.0 if ok else 0.0)
        return out

    return format_reward


format_reward = make_format_reward()
