"""`posttrain eval --env NAME`: a policy's episodes in a multi-turn environment, scored.

    posttrain eval --env guess:high=16 --model runs/rl --data.limit 200

Each held-out row (an environment seed) gets one greedy episode (``sampling.greedy``) and
``sampling.n`` sampled ones at ``sampling.temperature``, rolled out by `posttrain.rollout.multiturn`
(token in, token out, as in training; ``episode.*`` sets the same limits as ``rl.*``). Reported:

- ``success_rate`` (greedy episodes) and ``success_mean@n`` (sampled): the share of episodes whose
  reward is at least ``episode.success_reward`` (1.0: the built-in games pay 1 for a win); an
  episode whose environment failed never succeeds;
- ``reward_mean``, ``turns_mean``, ``policy_tokens_mean`` / ``env_tokens_mean`` per episode (the
  training log's `episode_metrics`, without the ``env/`` prefix);
- ``tool_error_rate`` (tool errors and malformed calls over tool calls plus malformed calls), and the
  counts of env failures (error, timeout, garbage), truncated tool outputs and episode statuses.

Two-player environments (``tictactoe``, `posttrain.rollout.selfplay`): the policy plays seat 0 against
a seeded random legal-move player in seat 1 (`RandomOpponent`; the env's ``legal_actions``), not
itself, so the number means something; the env's seed decides who opens. The episodes above are seat
0's (``success_rate``: the share of games won, reward >= ``success_reward``), and added are
``win_rate`` / ``draw_rate`` / ``loss_rate`` (greedy games; ``sampled_outcomes@n``),
``invalid_action_loss_rate`` (games the policy lost by an illegal move), ``opened_rate`` and
``random_baseline``: a random player in seat 0 against the same opponents on the same rows (for
Tic-Tac-Toe with a seeded opener, over many rows: about 0.44 win / 0.12 draw / 0.44 loss; 0.59 / 0.13
/ 0.28 in the games it opens). The random player needs the env's ``legal_actions``.

Held-out rows: ``env_rows(env, data.limit or 200, seed=1000 + sampling.seed)``. Training draws its rows with
``train.seed`` (0 by default), so the two never share a seed while ``train.seed`` < 1000. With
``--data.path FILE`` the file's rows (each row's fields go to ``reset``) are the held-out set.

Writes ``episodes.jsonl`` (every episode: row, kind, reward, turns, status, messages; two-player:
seat 0's, with the winner, the opening seat and the game's move log),
``results.json`` and ``results.md`` into ``train.out``, and prints the first two greedy transcripts.
Unlike the benchmark evaluation it does not resume: an episode costs a few model turns, and a
stopped run is rerun whole (its files are rewritten).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from posttrain.envs.training import EnvRollouts, episode_metrics
from posttrain.logging import console
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.rollout.multiturn import Episode, EpisodeLimits, run_episodes
from posttrain.rollout.selfplay import Game, RandomOpponent, run_games

HELD_OUT_SEED = 1000  # added to sampling.seed for the held-out rows (see the module docstring)


def episode_summary(episodes: list[Episode], success_reward: float) -> dict:
    """Success share, the training log's episode means and counts (`episode_metrics`), the tool
    error rate and the count of each status over `episodes` (see the module docstring)."""
    base = {k.removeprefix("env/"): v for k, v in episode_metrics(episodes).items() if not k.startswith("env/status_")}
    attempts = base["tool_calls"] + base["malformed_calls"]
    return {
        **base,
        "success": sum(1 for e in episodes if not e.failed and e.reward >= success_reward) / max(1, len(episodes)),
        "tool_error_rate": (base["tool_errors"] + base["malformed_calls"]) / attempts if attempts else 0.0,
        "statuses": dict(Counter(e.status for e in episodes)),
    }


def evaluate_env(model, tokenizer, env, sampling, limits: EpisodeLimits, out, *, rows: list[dict] | None = None,
                 limit: int = 200, success_reward: float = 1.0, timeout_s: float = 10.0, model_name: str = "",
                 engine=None) -> dict:
    """Run and score the episodes (module docstring); `env` is a registered spec (``guess:high=16``)
    or an environment class; `rows` overrides the seeded held-out rows; `engine` defaults to an
    `HFEngine` over `model`. Returns the result dict also written to ``out/results.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    envs = EnvRollouts(env, limit or 200, HELD_OUT_SEED + sampling.seed, limits, timeout_s, data_rows=rows)
    fmt = envs.bind(tokenizer)
    engine = engine or HFEngine(model, tokenizer, sequences_per_batch=sampling.sequences_per_batch)
    name = env if isinstance(env, str) else getattr(env, "__name__", "env")
    console.print(f"eval: env {name}: {len(envs.rows)} held-out rows, {int(sampling.greedy)} greedy + {sampling.n} "
                  f"sampled episodes each, at most {limits.max_turns} turns of {sampling.max_new_tokens} tokens")
    runs = ([("greedy", SamplingParams(n=1, temperature=0.0, max_new_tokens=sampling.max_new_tokens))] if sampling.greedy else [])
    runs += [(f"sample{j}", SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                           max_new_tokens=sampling.max_new_tokens, seed=sampling.seed * 7919 + j))
             for j in range(sampling.n)]
    t0 = time.perf_counter()
    by_kind: dict[str, list[Episode]] = {}
    games: dict[str, list[Game]] = {}  # two-player envs: the games, by kind
    with open(out / "episodes.jsonl", "w") as f:
        for kind, params in runs:
            if envs.two_player:  # the policy in seat 0 against a seeded random player
                games[kind] = play_vs_random(engine, tokenizer, envs, params, limits, fmt)
                eps = [g.episodes[0] for g in games[kind]]
            else:
                eps = run_episodes(engine, tokenizer, [envs.session() for _ in envs.rows], envs.rows, params, limits, fmt)
            by_kind[kind] = eps
            for i, (row, e) in enumerate(zip(envs.rows, eps)):
                extra = ({"winner": games[kind][i].winner, "first": games[kind][i].first, "game": games[kind][i].messages}
                         if envs.two_player else {})
                f.write(json.dumps({"row": i, "env_row": row, "kind": kind, "reward": e.reward, "turns": e.turns, **extra,
                                    "status": e.status, "counts": dict(e.counts), "messages": e.messages}, default=str) + "\n")
    seconds = time.perf_counter() - t0
    metrics: dict = {"num_rows": len(envs.rows), "seconds": seconds}
    sampled = [e for k, eps in by_kind.items() if k != "greedy" for e in eps]
    if "greedy" in by_kind:
        g = episode_summary(by_kind["greedy"], success_reward)
        metrics.update(success_rate=g.pop("success"), **g)
    if sampled:
        s = episode_summary(sampled, success_reward)
        metrics[f"success_mean@{sampling.n}"] = s["success"]
        metrics["sampled"] = s
    if games:
        metrics.update(vs_random_metrics(games, envs, tokenizer, limits, sampling.n))
    tokens = sum(len(e.token_ids) for eps in by_kind.values() for e in eps)
    metrics["tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0
    result = {"model": model_name, "env": name, "success_reward": success_reward, "metrics": metrics,
              "limits": {"max_turns": limits.max_turns, "max_episode_tokens": limits.max_episode_tokens,
                         "max_tool_output_tokens": limits.max_tool_output_tokens, "env_role": limits.env_role}}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown_env_table([result]))
    for e in by_kind.get("greedy", [])[:2]:  # example transcripts
        console.print(f"  episode ({e.status}, reward {e.reward:g}, {e.turns} turns):")
        for msg in e.messages:
            console.print(f"    {msg.get('role')}: {str(msg.get('content'))[:200]!r}")
    return result


def _opponents(rows: list[dict], seats: tuple[int, ...], tag: str) -> list[dict]:
    """Per row, a `RandomOpponent` in each of `seats`, seeded by the row (the same in every run)."""
    return [{s: RandomOpponent(f"{tag}{s}:{row.get('seed', i)}") for s in seats} for i, row in enumerate(rows)]


def play_vs_random(engine, tokenizer, envs: EnvRollouts, params: SamplingParams, limits: EpisodeLimits, fmt) -> list[Game]:
    """One game per held-out row: the policy in seat 0, a seeded random legal-move player in seat 1."""
    return run_games(engine, tokenizer, [envs.game() for _ in envs.rows], envs.rows, params, limits, fmt,
                     scripted=_opponents(envs.rows, (1,), "opponent"))


def _outcomes(games: list[Game]) -> dict:
    n, ok = max(1, len(games)), [g for g in games if not g.status.startswith("env_")]
    return {"win_rate": sum(g.winner == 0 for g in ok) / n, "draw_rate": sum(g.winner is None for g in ok) / n,
            "loss_rate": sum(g.winner == 1 for g in ok) / n}


def vs_random_metrics(games: dict[str, list[Game]], envs: EnvRollouts, tokenizer, limits: EpisodeLimits, n: int) -> dict:
    """Seat 0's win / draw / loss shares against the random player (greedy games, and sampled ones
    under ``sampled_outcomes``), games lost by an invalid action, and ``random_baseline``: a random
    legal-move player in seat 0 against the same opponents on the same rows (no model)."""
    out: dict = {}
    if "greedy" in games:
        g = games["greedy"]
        out.update(_outcomes(g), invalid_action_loss_rate=sum(x.invalid[0] > 0 for x in g) / max(1, len(g)),
                   opened_rate=sum(x.first == 0 for x in g) / max(1, len(g)))
    sampled = [x for k, gs in games.items() if k != "greedy" for x in gs]
    if sampled:
        out[f"sampled_outcomes@{n}"] = _outcomes(sampled)
    both = [{**a, **b} for a, b in zip(_opponents(envs.rows, (0,), "baseline"), _opponents(envs.rows, (1,), "opponent"))]
    base = run_games(None, tokenizer, [envs.game() for _ in envs.rows], envs.rows, SamplingParams(), limits, envs.fmt,
                     scripted=both)  # no model seat: the engine is never called
    out["random_baseline"] = _outcomes(base)
    return out


def markdown_env_table(results: list[dict]) -> str:
    """One row per result: model, env, rows, greedy success, sampled success, turns, tokens, tool errors."""
    head = ["model", "env", "rows", "success (greedy)", "success (sampled)", "reward", "turns", "policy tokens",
            "tool error rate", "env failures"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        m = r["metrics"]
        sampled = next((v for k, v in m.items() if k.startswith("success_mean@")), None)
        fails = sum(m.get(k, 0) for k in ("env_error", "env_timeout", "env_garbage"))
        cells = [r.get("model", ""), r["env"], str(m["num_rows"]),
                 f"{m['success_rate']:.3f}" if "success_rate" in m else "-", f"{sampled:.3f}" if sampled is not None else "-",
                 f"{m.get('reward_mean', 0.0):.3f}", f"{m.get('turns_mean', 0.0):.2f}", f"{m.get('policy_tokens_mean', 0.0):.1f}",
                 f"{m.get('tool_error_rate', 0.0):.3f}", str(fails)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
