"""Tic-Tac-Toe, a two-player game (`posttrain.rollout.selfplay`) for self-play and for eval against a
seeded random player.

    posttrain rl --rl.env tictactoe --rl.max_turns 5      # the policy plays both seats
    posttrain eval --env tictactoe --episode.max_turns 5   # seat 0 (X) is the policy, O plays at random

A 3x3 board rendered as text, the empty cells showing their numbers::

     X | 2 | 3
    ---+---+---
     4 | O | 6
    ---+---+---
     7 | 8 | 9

Seat 0 plays X, seat 1 plays O. **The seed decides who opens** (``random.Random(seed)``, a fair coin),
so a policy seat opens in half the games and a GRPO group (one seed) shares its opener.

A move is a cell number 1-9, parsed leniently from the model's text (`parse_move`): the part after
a closing ``</think>`` when there is one; then the last ``[n]`` or ``\\boxed{n}`` (TextArena's and
SPIRAL's answer formats); else the last standalone digit 1-9. **An illegal move (no number, a cell
taken) loses the game at once** for the seat that made it, as TextArena's games do once their error
allowance is spent; the step's ``info["counts"]`` says so and the rollout counts it on the mover's
episode (``invalid_actions``, the name `posttrain.envs.gym` counts too). Rewards: +1 win, -1 loss,
0 draw (zero-sum, as SPIRAL's), paid at the end only.

``legal_actions()`` lists the empty cells, for the scripted random opponent of ``posttrain eval``.

Limits: a seat makes at most 5 moves, so ``max_turns`` 5 lets every game finish. A seat that reaches
a turn or token limit when it is to move forfeits (``forfeit``: -1 to it, +1 to the other, as an
illegal move), so with ``max_turns`` 4 the opener loses a game that reaches its fifth move. An env
message (a move and the board) is about 40 tokens with a BPE tokenizer and 90 with a character one,
against ``max_tool_output_tokens``.
"""
from __future__ import annotations

import random
import re

from posttrain.envs.base import register_env

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
_MARKED = re.compile(r"\[\s*([1-9])\s*\]|\\boxed\{\s*([1-9])\s*\}")
_DIGIT = re.compile(r"(?<![0-9])([1-9])(?![0-9])")


def parse_move(text: str) -> int | None:
    """The cell (1-9) named by `text`, or None (see the module docstring for the order of rules)."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    marked = _MARKED.findall(text)
    if marked:
        a, b = marked[-1]
        return int(a or b)
    digits = _DIGIT.findall(text)
    return int(digits[-1]) if digits else None


def winner(board: list[str]) -> str | None:
    """'X' or 'O' when that mark holds a line, else None."""
    for a, b, c in LINES:
        if board[a] != " " and board[a] == board[b] == board[c]:
            return board[a]
    return None


def render(board: list[str]) -> str:
    cells = [board[i] if board[i] != " " else str(i + 1) for i in range(9)]
    rows = [" " + " | ".join(cells[r * 3 : r * 3 + 3]) for r in range(3)]
    return "\n---+---+---\n".join(rows)


@register_env("tictactoe", "Tic-Tac-Toe for two seats (self-play; eval vs a random player), +1 win / -1 loss / 0 draw")
class TicTacToe:
    """Tic-Tac-Toe (two-player protocol of `posttrain.rollout.selfplay`)."""

    players = ("X", "O")
    system_prompt = ("You are playing Tic-Tac-Toe on a 3x3 board whose empty cells show their numbers 1-9. "
                     "Players alternate marking one empty cell; three marks in a row, column or diagonal win. "
                     "Answer with the number of the cell you mark, e.g. [5]. An illegal move loses the game.")

    def __init__(self):
        self.board = [" "] * 9
        self.current_player, self.first, self.moves = 0, 0, 0
        self.over = False

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.board = [" "] * 9
        self.first = random.Random(seed).randrange(2)
        self.current_player, self.moves, self.over = self.first, 0, False
        opener = self.players[self.first]
        board = render(self.board)  # the other seat sees the board with the opener's move, first
        obs = [f"You are {mark}. {opener} moves first." + (f"\n\n{board}\n\nYour move." if seat == self.first else "")
               for seat, mark in enumerate(self.players)]
        return obs, {"first": self.first}

    def forfeit(self, seat: int) -> list[float]:
        """`seat` reached a turn or token limit on its move: it loses, as with an illegal move."""
        self.over = True
        rewards = [0.0, 0.0]
        rewards[seat], rewards[1 - seat] = -1.0, 1.0
        return rewards

    def legal_actions(self) -> list[str]:
        return [str(i + 1) for i in range(9) if self.board[i] == " "]

    def step(self, action: str):
        if self.over:
            raise RuntimeError("tictactoe: step after the game ended; call reset")
        me, other = self.current_player, 1 - self.current_player
        mark = self.players[me]
        cell = parse_move(action)
        if cell is None or self.board[cell - 1] != " ":
            why = "no cell number 1-9 in the reply" if cell is None else f"cell {cell} is taken"
            self.over = True
            text = f"{mark} made an illegal move ({why}) and loses."
            rewards = [0.0, 0.0]
            rewards[me], rewards[other] = -1.0, 1.0
            return [text, text], rewards, True, False, {"counts": {"invalid_actions": 1}, "invalid_action": True,
                                                         "reason": why, "winner": other}
        self.board[cell - 1] = mark
        self.moves += 1
        board = render(self.board)
        if winner(self.board) == mark or self.moves == 9:
            self.over = True
            won = winner(self.board) == mark
            text = f"{mark} played {cell}.\n\n{board}\n\n" + (f"{mark} wins." if won else "Draw.")
            rewards = [0.0, 0.0]
            if won:
                rewards[me], rewards[other] = 1.0, -1.0
            return [text, text], rewards, True, False, {"winner": me if won else None}
        self.current_player = other
        obs: list[str | None] = [None, None]
        obs[other] = f"{mark} played {cell}.\n\n{board}\n\nYour move."
        return obs, [0.0, 0.0], False, False, {}
