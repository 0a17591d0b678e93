"""`posttrain data transcripts`: SFT rows from an environment's scripted player.

    posttrain data transcripts --env guess:high=16,max_guesses=4 --rows 300 --model tiny-llama --out runs/tr
    posttrain sft --model tiny-llama --data runs/tr/data.jsonl --out runs/sft-guess

Plays ``--rows`` episodes of ``--env`` (rows seeded from ``--seed``) with the environment's
``demonstrate()`` (`posttrain.envs.transcripts.play`), bounded by ``--transcripts.*`` limits and the
tokenizer of ``--model`` (use the model and limits of the SFT / RL runs that follow), and writes
into ``--out``: ``data.jsonl`` (one ``messages`` row per kept episode, with ``reward``, ``env``,
``env_row``, ``turns``, ``status``), ``removed.jsonl`` (episodes left out and why: below
``--transcripts.success_reward`` unless ``--transcripts.keep all``, or an environment failure),
``report.json`` and ``report.md``.
"""
from __future__ import annotations

import json
import time

from posttrain.config import ConfigError
from posttrain.datatools.config import DataToolsConfig
from posttrain.datatools.stage import check_out
from posttrain.datatools.table import write_jsonl
from posttrain.logging import console


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of a model name (a tiny-* model's character tokenizer without building the model)."""
    if name.startswith("tiny-"):
        from posttrain.models.tokenizer import build_char_tokenizer

        return build_char_tokenizer()
    from transformers import AutoTokenizer

    from posttrain.models.loading import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)


def run(cfg: DataToolsConfig) -> dict:
    from posttrain.envs.transcripts import play
    from posttrain.rollout.multiturn import EpisodeLimits

    if not cfg.env:
        raise ConfigError("data transcripts: give the environment, e.g. --env guess:high=16,max_guesses=4")
    if cfg.data.path:
        raise ConfigError("data transcripts: reads no --data (its rows are the environment's seeds); drop --data")
    o = cfg.transcripts
    out = check_out(cfg)
    t0 = time.perf_counter()
    limits = EpisodeLimits(max_turns=o.max_turns, max_episode_tokens=o.max_episode_tokens,
                           max_tool_output_tokens=o.max_tool_output_tokens, env_role=o.env_role)
    tok = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    res = play(cfg.env, cfg.rows, seed=cfg.seed, tokenizer=tok, limits=limits, keep=o.keep,
               success_reward=o.success_reward, max_new_tokens=o.max_new_tokens, timeout_s=o.timeout_s)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "data.jsonl", res.rows)
    write_jsonl(out / "removed.jsonl", res.removed)
    kept_turns = sum(r["turns"] for r in res.rows) / max(1, len(res.rows))
    report = {"cmd": "transcripts", "env": cfg.env, "rows": cfg.rows, "seed": cfg.seed, "tokenizer": cfg.model.name,
              "kept": len(res.rows), "removed": len(res.removed), "success_rate": res.success_rate,
              "turns_mean_kept": kept_turns, "counts": dict(res.counts), "keep": o.keep,
              "success_reward": o.success_reward, "limits": {"max_turns": o.max_turns, "max_new_tokens": o.max_new_tokens,
              "max_episode_tokens": o.max_episode_tokens, "max_tool_output_tokens": o.max_tool_output_tokens,
              "env_role": o.env_role}, "seconds": round(time.perf_counter() - t0, 3)}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    md = ["# posttrain data transcripts", "", f"- env: {cfg.env}, {cfg.rows} episodes (seed {cfg.seed}) by its scripted player",
          f"- success rate {res.success_rate:.3f}; kept {len(res.rows)} ({o.keep}), removed {len(res.removed)}",
          f"- turns per kept episode: {kept_turns:.2f}", ""]
    (out / "report.md").write_text("\n".join(md) + "\n")
    console.print(f"data transcripts: {cfg.env}: {res.counts['episodes']} episodes, success {res.success_rate:.3f}, "
                  f"kept {len(res.rows)} -> {out / 'data.jsonl'}")
    return report
