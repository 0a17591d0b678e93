"""Countdown reward: an equation that uses each given number exactly once and equals the target.

The task of TinyZero (Pan et al. 2025) / Gandhi et al. 2025 ("Cognitive Behaviors that Enable
Self-Improving Reasoners"): given ``nums`` and ``target``, write an arithmetic expression with
``+ - * /`` and parentheses using every number exactly once.

The equation is the last ``<answer>...</answer>`` block, else the last non-empty line. A trailing
``= value`` is dropped. It is parsed with `ast` (never `eval`): only integer literals, binary
``+ - * /`` and parentheses are accepted (no unary minus, no powers, no names or calls), and it is
evaluated exactly with `fractions.Fraction`.

Scores: 1.0 correct; 0.0 for a wrong value, a number used the wrong number of times, a forbidden
token or division by zero; ``None`` when no equation can be found ("no answer").
Departure from TinyZero: no 0.1 partial "format score" (use `format_reward` for that).
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

__all__ = ["countdown_reward", "extract_equation", "evaluate_equation", "check_countdown"]

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ALLOWED_CHARS = re.compile(r"[\d\s+\-*/().]+")
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}
_MAX_CHARS = 200


def extract_equation(text: str) -> str | None:
    """The candidate equation: last <answer> block, else last non-empty line; '= v' dropped."""
    tags = _ANSWER_RE.findall(text or "")
    if tags:
        cand = tags[-1]
    else:
        lines = [ln for ln in (text or "").splitlines() if ln.strip()]
        if not lines:
            return None
        cand = lines[-1]
    cand = cand.split("=")[0].strip().replace("×", "*").replace("÷", "/")
    return cand or None


def _walk(node, leaves: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        leaves.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left = _walk(node.left, leaves)
        right = _walk(node.right, leaves)
        return _OPS[type(node.op)](left, right)  # Fraction / 0 raises ZeroDivisionError
    raise ValueError(f"forbidden expression element: {type(node).__name__}")


def evaluate_equation(equation: str) -> tuple[Fraction, list[int]]:
    """Exact value and the integer literals used, in order. Raises ValueError / ZeroDivisionError."""
    if len(equation) > _MAX_CHARS or not _ALLOWED_CHARS.fullmatch(equation):
        raise ValueError("equation has characters other than digits, + - * / and parentheses")
    try:
        tree = ast.parse(equation, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {exc.msg}") from exc
    leaves: list[int] = []
    value = _walk(tree.body, leaves)
    return value, leaves


def check_countdown(equation: str, nums, target) -> bool:
    """True iff `equation` uses each of `nums` exactly once and equals `target`. Never raises."""
    try:
        value, leaves = evaluate_equation(equation)
    except (ValueError, ZeroDivisionError, RecursionError):
        return False
    if Counter(leaves) != Counter(int(x) for x in nums):
        return False
    return value == Fraction(target)


def countdown_reward(prompts: list[str], completions: list[str], *, nums: list, target: list,
                     **_columns) -> list[float | None]:
    """1.0 / 0.0 per completion, None when no equation is found (see module docstring)."""
    out: list[float | None] = []
    for completion, numbers, tgt in zip(completions, nums, target, strict=True):
        eq = extract_equation(completion)
        out.append(None if eq is None else (1.0 if check_countdown(eq, numbers, tgt) else 0.0))
    return out
