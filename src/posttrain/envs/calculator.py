"""Arithmetic word problems with a calculator tool (tool style).

Offline and seeded: ``reset(seed=...)`` builds one problem from a few templates (``random.Random``),
e.g. "Ann has 7 boxes with 12 pencils each. She gives away 9 pencils. How many pencils does she have
left?". The one tool is ``calculator(expression)``; the final answer is the turn without a tool
call, read as its last number (``#### 75`` or plain ``75``). Reward 1 if it equals the answer.

The calculator evaluates model-written text, so it never calls ``eval``: it walks the expression's
syntax tree and admits only numbers, + - * / // % ** (exponent at most 12) and parentheses, at most
200 characters, results up to 1e15 in magnitude. Anything else is an error message to the model.

``demonstrate()`` is the scripted player of SFT transcripts (`posttrain.envs.transcripts`): it calls
the calculator with the problem's expression, then answers ``#### N`` with the tool's result.
"""
from __future__ import annotations

import ast
import operator
import random
import re

from posttrain.envs.base import register_env

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
NAMES = ("Ann", "Bo", "Cy", "Dee", "Eli")
ITEMS = ("pencils", "apples", "stamps", "marbles", "cards")


def safe_arithmetic(expression: str) -> float:
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses); ValueError else."""
    if len(expression) > 200:
        raise ValueError("expression longer than 200 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(b) > 12:
                raise ValueError("exponent larger than 12")
            v = _OPS[type(node.op)](a, b)
            if abs(v) > 1e15:
                raise ValueError("result larger than 1e15")
            return v
        raise ValueError(f"not allowed in a calculator expression: {type(node).__name__}")

    return ev(tree)


def _format(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


@register_env("calculator", "arithmetic word problems with a calculator tool (reward 1 for the right answer)")
class CalculatorEnv:
    def __init__(self, max_value: int = 20):
        self.max_value = max_value
        self.answer: float | None = None
        self.expression, self.last_result = "", None

    def reset(self, seed: int | None = None, **row) -> str:
        rng = random.Random(seed)
        who, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b, c = (rng.randint(2, self.max_value) for _ in range(3))
        kind = rng.randrange(3)
        self.last_result = None
        self.expression = (f"{a} * {b} - {min(c, a * b)}", f"{a} + {b} * {c}", f"{a} * {b} * {c}")[kind]
        if kind == 0:
            self.answer = a * b - min(c, a * b)
            c = min(c, a * b)
            return (f"{who} has {a} boxes with {b} {item} each. {who} gives away {c} {item}. "
                    f"How many {item} does {who} have left?")
        if kind == 1:
            self.answer = a + b * c
            return f"{who} has {a} {item} and buys {b} packs of {c} {item}. How many {item} does {who} have now?"
        self.answer = a * b * c
        return f"{who} stacks {a} rows of {b} crates, each crate holding {c} {item}. How many {item} in all?"

    def calculator(self, expression: str) -> str:
        """Evaluate an arithmetic expression with + - * / and parentheses, e.g. "3 * (4 + 5)"."""
        self.last_result = _format(safe_arithmetic(expression))
        return self.last_result

    def demonstrate(self) -> str:
        """The scripted turn: a calculator call with the problem's expression, then its result as the answer."""
        if self.last_result is None:
            return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{self.expression}"}}}}</tool_call>'
        return f"#### {self.last_result}"

    def reward(self, final_answer: str | None = None) -> float:
        if final_answer is None or self.answer is None:
            return 0.0
        nums = _NUM.findall(final_answer.split("####")[-1])
        return float(bool(nums) and abs(float(nums[-1]) - self.answer) < 1e-6)
