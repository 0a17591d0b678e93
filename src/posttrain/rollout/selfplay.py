"""Two-player games played by one policy against itself (self-play), token in / token out.

**The two-player protocol** (a class with these; ``players`` marks it, `posttrain.envs.base.is_two_player`)::

    players: tuple[str, str]           # the two seats' names, seat 0 then seat 1 ("X", "O")
    system_prompt: str                 # optional: shown to both seats
    current_player: int                # the seat to move (0 or 1), read after reset and after each step
    reset(seed) -> (observations, info)          # observations: [str, str], each seat's first message
    step(action_text) -> (observations, rewards, terminated, truncated, info)
        # the current player's move; observations: [str | None] * 2, what each seat is told (None:
        # nothing); rewards: [float] * 2, this step's reward of each seat; info["counts"]: names ->
        # ints added to the mover's episode counts (``{"invalid_actions": 1}`` for an illegal move)
    legal_actions() -> list[str]       # optional: the moves a scripted opponent may choose from
    close()                            # optional

The shape follows SPIRAL (Liu et al. 2025, self-play on zero-sum language games: one shared policy
plays both roles, each conditioned on its role by the prompt, rewards at the end) over TextArena's
two-player games (Guertler et al. 2025: ``reset(num_players, seed)``, ``get_observation() ->
(player_id, observation)``, ``step(action) -> (done, info)``, ``close() -> rewards``). Departures:
``step`` returns each seat's observation and reward (gymnasium / PettingZoo style) instead of a pull
API and rewards only at ``close``; the seat count is fixed at two.

**Rollout** (`run_games`): every seat has its own conversation and token stream, as one episode of
`posttrain.rollout.multiturn`: its prompt is the system prompt plus its first observation (rendered
at the seat's first turn, with what it was told before it: O's prompt already shows X's opening),
its sampled turns have mask 1, and what the environment tells it between two of its turns (the
opponent's move, the board) arrives as one env message with mask 0, appended as template deltas
(`TurnFormat`) and never re-tokenized. The opponent's sampled tokens are never in a seat's stream.
Each round batches the current player's turn of every live game into one engine call (both seats
are the same engine, so the same policy). A game gives one `Episode` per seat: that seat's reward
(the sum of its step rewards), put at its last turn by ``token_rewards``; the trainer needs no change.

Limits, per seat (`EpisodeLimits`): ``max_turns`` model turns, ``max_episode_tokens`` tokens after
the seat's prompt, ``max_tool_output_tokens`` per env message. A seat that reaches a limit when it is
to move ends the game for both (status ``turn_limit`` / ``token_limit``). An environment with
``forfeit(seat) -> [reward, reward]`` is asked what that seat's forfeit pays (Tic-Tac-Toe: -1 to it,
+1 to the other, as an illegal move), so a losing seat cannot stall into a draw by running out its
budget; without one the rewards paid so far stay. An environment call that raises, returns garbage
or runs past ``timeout_s`` fails the game: both episodes get that status, ``failure_reward`` and a count (so a
failed game counts twice in the per-episode metrics); the other games go on. A seat that never moved
(the opener forfeited on its first move) has an episode with no token: its reward is in the game, but
there is nothing to train. Templates that are not append-only start a new sample per turn, as in
`multiturn`.

Scripted opponents (``scripted``: per game, seat -> ``policy(session) -> action``, e.g.
`RandomOpponent`) play their seat without the engine; ``posttrain eval`` uses them for a meaningful
success rate (the policy against a seeded random-legal-move player).
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from posttrain.envs.base import BrokenSession, EnvFailure, EnvSession, call_with_timeout, is_two_player
from posttrain.rollout.base import Completion, RolloutEngine, SamplingParams
from posttrain.rollout.multiturn import (
    Episode, EpisodeLimits, TurnFormat, _budget, _env_turn, _finish, _initial_messages, _record_turn, _split_prompt,
    _State,
    turn_format,
)


class TwoPlayerSession(EnvSession):
    """One game of one two-player environment behind checked, time-bounded calls: ``open(row) ->
    (system or None, [obs, obs])``, ``to_move() -> seat``, ``step(text) -> (obs, rewards, done, info)``,
    ``legal()`` and ``close()`` (`EnvSession`'s). Garbage or a raise is `EnvFailure`."""

    @staticmethod
    def _pair(x, what: str, kind: type) -> list:
        ok = isinstance(x, (list, tuple)) and len(x) == 2
        if ok and kind is str:
            ok = all(v is None or isinstance(v, str) for v in x)
        if ok and kind is float:
            ok = all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in x)
        if not ok:
            want = "[str | None, str | None]" if kind is str else "[float, float] (finite)"
            raise EnvFailure("env_garbage", f"{what}: got {x!r}, expected {want}, one per seat")
        return [float(v) for v in x] if kind is float else list(x)

    def open(self, row: dict) -> tuple[str | None, list]:
        out = self._call(self.env.reset, what="reset", seed=row.get("seed"))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise EnvFailure("env_garbage", f"reset returned {type(out).__name__}, expected (observations, info)")
        system = getattr(self.env, "system_prompt", None)
        return (system if isinstance(system, str) else None), self._pair(out[0], "reset observations", str)

    def to_move(self) -> int:
        seat = self._call(lambda: self.env.current_player, what="current_player")
        if seat not in (0, 1) or isinstance(seat, bool):
            raise EnvFailure("env_garbage", f"current_player is {seat!r}, expected 0 or 1")
        return int(seat)

    def step(self, text: str) -> tuple[list, list[float], bool, dict]:
        out = self._call(self.env.step, text, what="step")
        if not (isinstance(out, tuple) and len(out) == 5):
            raise EnvFailure("env_garbage", f"step returned {type(out).__name__}, expected a 5-tuple")
        obs, rewards, terminated, truncated, info = out
        return (self._pair(obs, "step observations", str), self._pair(rewards, "step rewards", float),
                bool(terminated) or bool(truncated), info if isinstance(info, dict) else {})

    def forfeit(self, seat: int) -> list[float] | None:
        """What the env pays when `seat` forfeits (it reached a limit on its move), or None when the env
        has no ``forfeit``."""
        fn = getattr(self.env, "forfeit", None)
        if not callable(fn):
            return None
        return self._pair(self._call(fn, seat, what="forfeit"), "forfeit rewards", float)

    def legal(self) -> list[str]:
        fn = getattr(self.env, "legal_actions", None)
        if not callable(fn):
            raise EnvFailure("env_error", f"{type(self.env).__name__} has no legal_actions() for a scripted opponent")
        moves = self._call(fn, what="legal_actions")
        if not (isinstance(moves, (list, tuple)) and moves and all(isinstance(m, str) for m in moves)):
            raise EnvFailure("env_garbage", f"legal_actions returned {moves!r}, expected a non-empty list of str")
        return list(moves)


class _BrokenGame(BrokenSession, TwoPlayerSession):
    """The session of a game whose constructor failed: it fails at ``open``."""


def make_game(factory: Callable, timeout_s: float = 10.0) -> TwoPlayerSession:
    """A fresh two-player environment from `factory` in its session (a failing or non-two-player
    constructor gives a session that fails the game at ``open``)."""
    try:
        env = call_with_timeout(factory, timeout_s=timeout_s, what="environment constructor")
    except EnvFailure as e:
        return _BrokenGame(e)
    if not is_two_player(env):
        return _BrokenGame(EnvFailure("env_garbage", f"{type(env).__name__} is not a two-player environment "
                                                     "(needs players = (name, name), current_player, reset, step)"))
    return TwoPlayerSession(env, timeout_s)


class RandomOpponent:
    """A scripted seat: a uniformly random legal move (``legal_actions``), seeded."""

    def __init__(self, seed: int | None):
        self.rng = random.Random(seed)

    def __call__(self, session: TwoPlayerSession) -> str:
        return self.rng.choice(session.legal())


class _Handle:
    """What `multiturn._finish` closes and counts for a seat (the game closes its env once)."""

    def __init__(self):
        self.counts: Counter = Counter()

    def close(self) -> None:
        pass


class _Seat(_State):
    """One seat's growing episode: `_State` plus what it was told since its last turn."""

    def __init__(self):
        super().__init__(_Handle(), [], [])
        self.first: str | None = None  # its first observation (reset)
        self.pending: list[str] = []  # observations since its last turn
        self.started = False  # prompt rendered
        self.scripted_turns = 0

    def credit(self, r: float) -> None:
        """A step's reward for this seat, on its latest turn (before its first turn: ``final``)."""
        if self.turn_rewards:
            self.turn_rewards[-1] += r
        else:
            self.final += r


@dataclass
class Game:
    """One finished game: the seats' episodes (seat order), rewards, status (``done``, ``turn_limit``,
    ``token_limit`` or a failure kind), the seat that moved first, the winner (the seat with the higher
    reward, None on a tie), moves played, invalid actions per seat, the scripted seats."""

    row: dict
    episodes: list[Episode]
    rewards: list[float]
    status: str
    first: int | None = None
    winner: int | None = None
    moves: int = 0
    invalid: list[int] = field(default_factory=lambda: [0, 0])
    scripted: tuple[int, ...] = ()
    messages: list[dict] = field(default_factory=list)  # the game's moves and env messages, for display


class _Live:
    def __init__(self, session: TwoPlayerSession, row: dict, scripted: Mapping[int, Callable]):
        self.session, self.row, self.scripted = session, row, dict(scripted)
        self.seats = [_Seat(), _Seat()]
        self.system: str | None = None
        self.status, self.to_move, self.first, self.moves = "", 0, None, 0
        self.log: list[dict] = []

    def fail(self, e: EnvFailure) -> None:
        self.status = e.kind
        for st in self.seats:
            st.status = e.kind
            st.counts[e.kind] += 1
            st.messages.append({"role": "env-error", "content": str(e)})
        self.log.append({"role": "env-error", "content": str(e)})


def _open_game(session: TwoPlayerSession, row: dict, scripted) -> _Live:
    g = _Live(session, row, scripted)
    try:
        g.system, obs = session.open(row)
        g.to_move = g.first = session.to_move()
    except EnvFailure as e:
        g.fail(e)
        return g
    for st, o in zip(g.seats, obs):
        st.first = o
    return g


def _step(g: _Live, text: str) -> None:
    """The current player's move `text`: step the env, credit each seat, queue what each is told."""
    mover = g.to_move
    g.log.append({"role": f"seat{mover}", "content": text})
    try:
        obs, rewards, done, info = g.session.step(text)
    except EnvFailure as e:
        g.fail(e)
        return
    g.moves += 1
    counts = info.get("counts")
    if isinstance(counts, dict):  # the env's own counts (invalid actions, ...) join the mover's episode
        g.seats[mover].counts.update({str(k): v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)})
    for st, o, r in zip(g.seats, obs, rewards):
        st.credit(r)
        if o:
            st.pending.append(o)
    if done:  # what the seats are told at the end reaches no stream (no turn follows): the game log has it
        g.status = "done"
        g.log.append({"role": "env", "content": "\n\n".join(dict.fromkeys(o for o in obs if o))[:2000]})
        return
    try:
        g.to_move = g.session.to_move()
    except EnvFailure as e:
        g.fail(e)


def _limit(g: _Live, status: str) -> None:
    """The to-move seat reached a limit: the game ends; the env's forfeit rewards (if any) are credited."""
    g.status = status
    try:
        rewards = g.session.forfeit(g.to_move)
    except EnvFailure as e:
        g.fail(e)
        return
    if rewards is not None:
        for st, r in zip(g.seats, rewards):
            st.credit(r)
        g.log.append({"role": "env", "content": f"seat {g.to_move} reached its {status.replace('_', ' ')} and forfeits."})


def _play_scripted(g: _Live, limits: EpisodeLimits) -> None:
    """Scripted seats move until a model seat is to move or the game ends."""
    while not g.status and g.to_move in g.scripted:
        st = g.seats[g.to_move]
        if st.scripted_turns >= limits.max_turns:
            _limit(g, "turn_limit")
            return
        try:
            move = g.scripted[g.to_move](g.session)
        except EnvFailure as e:
            g.fail(e)
            return
        st.scripted_turns += 1
        st.pending.clear()
        st.messages.append({"role": "assistant", "content": move})
        _step(g, move)


def _begin_turn(g: _Live, fmt: TurnFormat, tokenizer, limits: EpisodeLimits) -> list[int] | None:
    """The to-move seat's input ids: its prompt at its first turn, else its stream + the env message
    of what it was told since its last turn; None when a limit ends the game."""
    from posttrain.data import encode_prompt

    st = g.seats[g.to_move]
    if len(st.turn_ends) >= limits.max_turns:
        _limit(g, "turn_limit")
        return None
    text, st.pending = "\n\n".join(st.pending), []
    if not st.started:
        st.started = True
        first = "\n\n".join(x for x in (st.first, text) if x)
        st.messages = _initial_messages(g.system, first, g.row)
        st.prompt_ids = encode_prompt(tokenizer, st.messages)
        return list(st.prompt_ids)
    if not _env_turn(st, fmt, text, tokenizer, limits):
        _limit(g, "token_limit")
        return None
    if not fmt.append_only:
        return _split_prompt(st, tokenizer)
    return st.prompt_ids + st.ids


def _model_turn(g: _Live, inp: list[int], comp: Completion, fmt: TurnFormat, tokenizer, limits: EpisodeLimits,
                params: SamplingParams) -> None:
    """Record the to-move seat's sampled turn (cut to its budget) and play it."""
    _step(g, _record_turn(g.seats[g.to_move], inp, comp, fmt, tokenizer, limits, params))


def run_games(engine: RolloutEngine, tokenizer, sessions: Sequence[TwoPlayerSession], rows: Sequence[dict],
              params: SamplingParams, limits: EpisodeLimits = EpisodeLimits(), fmt: TurnFormat | None = None,
              scripted: Sequence[Mapping[int, Callable]] | None = None) -> list[Game]:
    """Play one game per (session, row), the model seats of all live games batched into one engine
    call per round (``params.n`` is ignored); `scripted[i]` maps game i's scripted seats to their
    policies. Returns the games in order (see the module docstring); the engine's errors are raised."""
    fmt = fmt or turn_format(tokenizer, limits.env_role)
    scripted = scripted if scripted is not None else [{}] * len(rows)
    games = [_open_game(s, dict(r), sc) for s, r, sc in zip(sessions, rows, scripted, strict=True)]
    for round_ in range(2 * limits.max_turns + 1):
        for g in games:
            if not g.status:
                _play_scripted(g, limits)
        turns = []
        for g in games:
            inp = None if g.status else _begin_turn(g, fmt, tokenizer, limits)
            if inp is not None:
                turns.append((g, inp))
        if not turns:
            break
        seed = None if params.seed is None else params.seed + 7919 * round_
        budget = max(_budget(g.seats[g.to_move], limits, params) for g, _ in turns)
        sp = SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p, max_new_tokens=max(1, budget),
                            stop=params.stop, seed=seed)
        outs = engine.generate([inp for _, inp in turns], sp)
        for (g, inp), out in zip(turns, outs, strict=True):
            _model_turn(g, inp, out[0], fmt, tokenizer, limits, params)
    return [_finish_game(g, tokenizer, limits) for g in games]


def _finish_game(g: _Live, tokenizer, limits: EpisodeLimits) -> Game:
    g.status = g.status or "turn_limit"
    g.session.close()
    episodes = []
    for st in g.seats:
        st.status = g.status
        episodes.append(_finish(st, tokenizer, limits))
    episodes[0].counts.update(g.session.counts)
    rewards = [e.reward for e in episodes]
    winner = None if rewards[0] == rewards[1] else (0 if rewards[0] > rewards[1] else 1)
    return Game(row=g.row, episodes=episodes, rewards=rewards, status=g.status, first=g.first, winner=winner,
                moves=g.moves, invalid=[e.counts.get("invalid_actions", 0) for e in episodes],
                scripted=tuple(sorted(g.scripted)), messages=g.log)


def game_metrics(games: list[Game], prefix: str = "env/") -> dict:
    """Per-seat win shares, draws (equal rewards, failures excluded), moves and invalid actions per game."""
    n = max(1, len(games))
    ok = [g for g in games if not g.status.startswith("env_")]
    out = {f"{prefix}games": len(games), f"{prefix}moves_mean": sum(g.moves for g in games) / n,
           f"{prefix}draw_rate": sum(1 for g in ok if g.winner is None) / n}
    for seat in (0, 1):
        out[f"{prefix}seat{seat}_win_rate"] = sum(1 for g in ok if g.winner == seat) / n
        out[f"{prefix}seat{seat}_invalid_actions"] = sum(g.invalid[seat] for g in games)
    out[f"{prefix}first_mover_win_rate"] = sum(1 for g in ok if g.winner is not None and g.winner == g.first) / n
    return out
