"""Environment episodes for the online RL trainer (``posttrain rl --rl.env NAME``).

Rows are the environment's seeds (`posttrain.envs.env_rows`), or the data rows when ``data.path``
is a file (each row's fields go to ``reset``). A GRPO group is ``samples_per_prompt`` episodes on one
row (one env seed); the trajectory-level reward is the episode's; env / tool tokens are in the
sequence with mask 0 (no loss, no gradient, no advantage); each turn's reward sits at the turn's last
token (`Episode.token_rewards`) for a turn-level estimator such as ``turn_discounted``.

Two-player environments (self-play, `posttrain.rollout.selfplay`, e.g. ``tictactoe``): a row's
``samples_per_prompt`` games are played by the policy in both seats, and each game gives one sample per
seat. **A GRPO group is one seat of one seed** (`EnvRollouts.groups_per_row` = 2: the seat-0 samples,
then the seat-1 samples of that seed's games), so the baseline is conditioned on the role, as in
SPIRAL's role-conditioned advantage estimation (Liu et al. 2025; they keep a running mean per game
and role, here the group's mean per seed and seat). One group of both seats would be wrong for a
zero-sum game: its mean is 0 whatever the seats' odds, so a seat with a first-move edge would be
credited for the edge. A step trains ``prompts_per_step`` seeds, i.e. 2 x ``prompts_per_step`` groups.

Departure from TRL's ``environment_factory``: the environment's ``reward()`` is the reward (no reward
function over the completions), and the trainer's ``rl.reward`` functions are not used with an env.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from posttrain.data import Example
from posttrain.envs.base import ENVS, BrokenSession, EnvFailure, EnvSession, env_factory, env_rows, make_session, parse_env_spec, style_of
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.multiturn import Episode, EpisodeLimits, TurnFormat, run_episodes, turn_format

COUNTED = ("tool_calls", "tool_errors", "malformed_calls", "truncated_outputs", "split_samples", "invalid_actions",
           "env_error", "env_timeout", "env_garbage")
FAILURES = ("env_error", "env_timeout", "env_garbage")


class EnvRollouts:
    """Rows, sessions and episodes of one environment for the trainer.

    `spec`: a registered name with options (``guess:high=16``) or an environment class.
    `data_rows`: rows for ``reset`` (from data); None: `n_rows` seeded rows from the environment."""

    def __init__(self, spec: str | Callable[[], Any], n_rows: int, seed: int, limits: EpisodeLimits,
                 timeout_s: float = 10.0, data_rows: list[dict] | None = None):
        self.spec, self.limits, self.timeout_s = spec, limits, timeout_s
        self.factory = env_factory(spec)
        self.rows = list(data_rows) if data_rows is not None else env_rows(self.factory, n_rows, seed)
        self.fmt: TurnFormat | None = None
        self.style = ENVS.needs(parse_env_spec(spec)[0]).style if isinstance(spec, str) else style_of(spec)
        self.two_player = self.style == "two_player"
        self.groups_per_row = 2 if self.two_player else 1  # training groups per row (two-player: one per seat)

    def examples(self) -> list[Example]:
        """One `Example` per row (for the trainer's sampler, logs and display): the row in ``extra``."""
        name = self.spec if isinstance(self.spec, str) else getattr(self.spec, "__name__", "env")
        return [Example(kind="prompt_only", conversational=False, prompt=f"{name} {row}", extra={"env_row": row},
                        where=f"{name}[{i}]") for i, row in enumerate(self.rows)]

    def bind(self, tokenizer) -> TurnFormat:
        """Find how the chat template appends env turns (once); returns the `TurnFormat`."""
        self.fmt = turn_format(tokenizer, self.limits.env_role)
        return self.fmt

    def game(self):
        """A fresh `TwoPlayerSession` (two-player environments; a broken one fails its game at ``open``)."""
        from posttrain.rollout.selfplay import make_game

        return make_game(self.factory, self.timeout_s)

    def session(self) -> EnvSession:
        """A fresh session of the environment (a broken one fails its episode at ``open``)."""
        try:
            return make_session(self.factory, self.timeout_s)
        except EnvFailure as e:
            return BrokenSession(e)

    def rollout(self, engine, tokenizer, idx: list[int], per_row: int, params: SamplingParams):
        """(groups, metrics): for each row index in `idx`, the training samples of `per_row` episodes
        (an episode with no token, failed at reset, is left out and counted); a two-player env gives
        `groups_per_row` groups per row, one per seat."""
        fmt = self.fmt or self.bind(tokenizer)
        rows = [self.rows[i] for i in idx for _ in range(per_row)]
        if self.two_player:
            return self._rollout_games(engine, tokenizer, rows, len(idx), per_row, params, fmt)
        episodes = run_episodes(engine, tokenizer, [self.session() for _ in rows], rows, params, self.limits, fmt)
        groups: list[list[Episode]] = []
        for g in range(len(idx)):
            eps = episodes[g * per_row : (g + 1) * per_row]
            groups.append([s for e in eps for s in e.samples() if s.token_ids])
        return groups, episode_metrics(episodes)

    def _rollout_games(self, engine, tokenizer, rows, n_idx: int, per_row: int, params, fmt):
        """Self-play: `per_row` games per row; groups per row and seat, seat 0 first (module docstring)."""
        from posttrain.rollout.selfplay import game_metrics, run_games

        games = run_games(engine, tokenizer, [self.game() for _ in rows], rows, params, self.limits, fmt)
        groups: list[list[Episode]] = []
        for g in range(n_idx):
            mine = games[g * per_row : (g + 1) * per_row]
            for seat in (0, 1):
                groups.append([s for game in mine for s in game.episodes[seat].samples() if s.token_ids])
        return groups, {**episode_metrics([e for game in games for e in game.episodes]), **game_metrics(games)}


def env_rollouts_for(cfg, train_src=None) -> EnvRollouts:
    """The `EnvRollouts` of an RL config (`posttrain.configs.RLConfig`): ``rl.env`` and its limits;
    rows seeded from ``train.seed`` (``data.train_rows`` of them), or the data's rows when ``data.path``
    is a file or rows are given in Python (`train_src`)."""
    from posttrain.trainers.common import read_split

    c = cfg.rl
    data_rows = None
    if train_src is not None or not cfg.data.path.startswith("task:"):
        examples, _, _ = read_split(cfg.data, "rl", source=train_src)
        data_rows = [{"prompt": ex.prompt, "answer": ex.answer, **ex.extra} for ex in examples]
    limits = EpisodeLimits(max_turns=c.max_turns, max_episode_tokens=c.max_episode_tokens,
                           max_tool_output_tokens=c.max_tool_output_tokens, env_role=c.env_role)
    return EnvRollouts(c.env, cfg.data.train_rows, cfg.train.seed, limits, c.env_timeout_s, data_rows)


def episode_metrics(episodes: list[Episode]) -> dict:
    """The rollout's env metrics: mean reward / turns / tokens, status shares, summed counts."""
    n = max(1, len(episodes))
    counts = Counter()
    for e in episodes:
        counts.update({k: v for k, v in e.counts.items() if k in COUNTED})
    status = Counter(e.status for e in episodes)
    out = {"env/episodes": len(episodes), "env/reward_mean": sum(e.reward for e in episodes) / n,
           "env/turns_mean": sum(e.turns for e in episodes) / n,
           "env/policy_tokens_mean": sum(sum(e.mask()) for e in episodes) / n,
           "env/env_tokens_mean": sum(len(e.token_ids) - sum(e.mask()) for e in episodes) / n,
           "env/no_token_episodes": sum(1 for e in episodes if not e.token_ids)}
    out.update({f"env/{k}": counts.get(k, 0) for k in COUNTED})
    out.update({f"env/status_{k}": v / n for k, v in status.items()})
    return out
