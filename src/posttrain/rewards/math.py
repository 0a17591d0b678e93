"""Math answer extraction, answer equivalence, and the 1/0 math correctness reward.

Outcome reward for verifiable math as used in DeepSeekMath / DeepSeek-R1 style RL (Shao et al. 2024;
DeepSeek-AI 2025): the completion's final answer is extracted and compared with the gold answer,
reward 1.0 if equivalent, else 0.0. Equivalence uses Hugging Face `math-verify` (`parse`/`verify`),
so ``1/2``, ``0.5`` and ``\\frac{1}{2}`` all match.

Extraction order in `extract_answer` (first that matches wins):
1. the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces handled by a brace counter;
2. the last ``<answer>...</answer>`` block;
3. GSM8K's ``#### n`` marker (last one);
4. the last number in the text (integers, decimals, ``a/b`` fractions, thousands commas).

Departures / choices:
- math-verify's timeout uses ``signal.alarm``, which only works in the main thread. Off the main
  thread (e.g. inside `combine_rewards`' worker threads) we call it without its own timeout; the
  caller's per-call timeout bounds it instead.
- If math-verify cannot parse either side, or raises, a numeric fallback compares the two strings
  as numbers (relative tolerance 1e-6), then as normalized strings.
- `math_reward` returns ``None`` (not 0.0) when no answer can be extracted, so that
  `combine_rewards` can count "no answer" separately; it is scored 0.0 there.
- A gold answer that itself contains ``####`` or ``\\boxed`` (a full GSM8K/MATH solution) is
  reduced with `extract_answer` first.
"""
from __future__ import annotations

import math
import re
import threading
from fractions import Fraction

__all__ = ["extract_answer", "extract_boxed", "answers_match", "math_reward", "normalize_answer"]

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_GSM8K_RE = re.compile(r"####\s*([^\n]+)")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in `text`, with nested braces; None if absent/unclosed."""
    found = None
    for m in _BOXED_RE.finditer(text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    found = text[start:i]
                    break
    return found.strip() if found is not None else None


def _clean_number(s: str) -> str:
    return s.replace(",", "").replace(" ", "").rstrip(".")


def extract_answer(text: str) -> str | None:
    """Final answer string of a completion (see module docstring for the order), or None."""
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    tags = _ANSWER_TAG_RE.findall(text)
    if tags and tags[-1].strip():
        return tags[-1].strip()
    gsm = _GSM8K_RE.findall(text)
    if gsm and gsm[-1].strip():
        return _clean_number(gsm[-1].strip()) if _NUMBER_RE.fullmatch(gsm[-1].strip()) else gsm[-1].strip()
    nums = _NUMBER_RE.findall(text)
    if nums:
        return _clean_number(nums[-1])
    return None


def normalize_answer(s: str) -> str:
    """Light string normalization: strip $, spaces, trailing period, \\text{}, \\left/\\right."""
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".").lower()


def _to_number(s: str) -> float | None:
    s = normalize_answer(s).replace(",", "").replace("\\%", "").replace("%", "").replace("\\$", "")
    m = re.fullmatch(r"\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    if m:
        s = f"{m.group(1)}/{m.group(2)}"
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(Fraction(num) / Fraction(den))
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def _mv_parse(s: str, timeout: int | None):
    from math_verify import parse

    parsed = parse(s if "$" in s else f"${s}$", parsing_timeout=timeout)
    return parsed if parsed else parse(s, parsing_timeout=timeout)


def answers_match(pred: str | None, gold: str | None, timeout_s: int = 5) -> bool:
    """True if `pred` and `gold` denote the same mathematical answer.

    math-verify `verify(gold, pred)` first (with `timeout_s` seconds when on the main thread), then
    numeric comparison (rel. tol. 1e-6), then normalized string equality. Never raises.
    """
    if pred is None or gold is None:
        return False
    if normalize_answer(pred) == normalize_answer(gold):
        return True
    timeout = timeout_s if threading.current_thread() is threading.main_thread() else None
    try:
        from math_verify import verify

        g, p = _mv_parse(gold, timeout), _mv_parse(pred, timeout)
        if g and p and verify(g, p, timeout_seconds=timeout):
            return True
    except Exception:  # math-verify timeouts and parser errors fall through to the fallback
        pass
    a, b = _to_number(pred), _to_number(gold)
    if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return False


def _gold_answer(gold) -> str | None:
    if gold is None:
        return None
    gold = str(gold)
    if "####" in gold or "\\boxed" in gold or "\\fbox" in gold:
        return extract_answer(gold)
    return gold.strip()


def math_reward(prompts: list[str], completions: list[str], *, answer: list, **_columns) -> list[float | None]:
    """1.0 if the extracted answer matches the `answer` column, 0.0 if not, None if no answer found."""
    out: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        pred = extract_answer(completion)
        if pred is None:
            out.append(None)
            continue
        out.append(1.0 if answers_match(pred, _gold_answer(gold)) else 0.0)
    return out
