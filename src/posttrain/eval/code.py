"""Checking code benchmarks (HumanEval and your own files with ``--data.checker code``).

The checked program, decided per completion from what the completion holds:

- **continuation** (base models, and instruct models given HumanEval's raw prompt, which is how
  `posttrain eval --benchmark humaneval` prompts: the prompt string is tokenized as it is, no chat
  template): the program is ``prompt + completion`` as in HumanEval's own harness, with the
  completion cut at its first non-blank line that starts at column 0 (the Codex paper's stop
  sequences ``\\ndef``, ``\\nclass``, ``\\nif``, ``\\nprint``, ``\\n#`` generalized: whatever follows
  the function body is not part of it, e.g. an instruct model's explanation or a fenced repeat);
- **a whole function** (chat models): when the completion has a fenced code block, or itself defines
  the entry point at column 0, that code is the program, after the prompt when the prompt is Python
  (HumanEval's stub parses: its docstring-only function is then redefined, and its imports and
  helper functions stay). Lines after the code that are not Python definitions or imports (prose,
  ``print(...)``, ``if __name__``) are dropped.

The program runs against the problem's tests through `posttrain.rewards.code.code_reward`, in the
sandbox (`posttrain.sandbox`): HumanEval's ``test`` (``def check(candidate)``) + ``entry_point``, MBPP's
``test_list`` or APPS' ``input_output`` (+ ``fn_name``). A sample is correct when every test passes.

The benchmark's gold (`Problem.gold`) is a JSON object holding those test columns and, for
continuation, the ``prompt`` (`code_gold`), so the checker fits the harness's ``match(answer, gold)``:
the extracted "answer" is the completion's code (`extract_code`), majority voting groups identical
programs, and maj@k runs the winning program.
"""
from __future__ import annotations

import ast
import json
import re

__all__ = ["TEST_COLUMNS", "code_gold", "extract_code", "code_match", "checked_program"]

TEST_COLUMNS = ("test", "entry_point", "test_list", "input_output", "fn_name")
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_KEEP_TOP = re.compile(r"(def |class |async def |import |from |@|#)")


def code_gold(tests: dict, prompt: str | None = None) -> str:
    """The gold string of a code problem: its test columns (`TEST_COLUMNS`) and the prompt to continue
    (kept only when it is Python code, e.g. HumanEval's stub), as JSON."""
    gold = {k: v for k, v in tests.items() if k in TEST_COLUMNS and v is not None}
    if not any(k in gold for k in ("test", "test_list", "input_output")):
        raise ValueError(f"a code problem needs one of test (+ entry_point), test_list, input_output; got {sorted(tests)}")
    if isinstance(prompt, str) and _parses(prompt):
        gold["prompt"] = prompt
    return json.dumps(gold)


def extract_code(text: str) -> str | None:
    """The code of a completion (trailing blank space dropped; None when empty): the text itself when
    it starts as an indented function body (a continuation; a fence after the body is cut later),
    else its first fenced block when it has one, else the text."""
    first = next((line for line in text.split("\n") if line.strip()), "")
    m = None if first[:1].isspace() else _FENCE.search(text)
    code = m.group(1) if m else text
    return code.rstrip() or None


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _body(continuation: str) -> str:
    """A function body continuation, up to its first non-blank line at column 0."""
    lines = continuation.split("\n")
    for i, line in enumerate(lines):
        if i and line.strip() and not line[0].isspace():
            return "\n".join(lines[:i])
    return continuation


def _whole(code: str) -> str:
    """Code that defines functions, up to its first top-level line that is not a definition, an
    import, a decorator or a comment; then its longest prefix that parses, at top-level lines."""
    lines = code.split("\n")
    tops = [i for i, line in enumerate(lines) if line.strip() and not line[0].isspace()]
    end = next((i for i in tops if not _KEEP_TOP.match(lines[i])), len(lines))
    for cut in [end] + [i for i in reversed(tops) if i < end]:
        if _parses("\n".join(lines[:cut])):
            return "\n".join(lines[:cut])
    return "\n".join(lines[:end])


def checked_program(answer: str, gold: dict) -> str:
    """The program that runs for an extracted `answer` (see the module docstring)."""
    prompt, entry = gold.get("prompt") or "", gold.get("entry_point") or gold.get("fn_name")
    defines = entry and re.search(rf"^(async\s+)?def\s+{re.escape(entry)}\s*\(", answer, re.M)
    if not prompt or defines:
        code = _whole(answer)
        return f"{prompt.rstrip()}\n\n\n{code}\n" if prompt else code + "\n"
    return prompt + _body(answer) + "\n"


def code_match(answer: str, gold: str, timeout_s: float = 10.0) -> bool:
    """Does the program of `answer` pass every test of `gold` (`code_gold`), run in the sandbox?"""
    from posttrain.rewards.code import code_reward

    spec = json.loads(gold)
    program = checked_program(answer, spec)
    cols = {k: [spec[k]] for k in TEST_COLUMNS if k in spec}
    score = code_reward([""], [f"```python\n{program}```"], timeout_s=timeout_s, **cols)[0]
    return score is not None and score >= 1.0
