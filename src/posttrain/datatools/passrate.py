"""`posttrain data passrate`: how often a model solves each prompt, as new columns.

For every row with a prompt and a reference answer, ``passrate.k`` completions are sampled from
``--model`` through `posttrain.rollout.HFEngine` (the engine `posttrain rl` and `posttrain eval`
sample with) and checked by the verifier: ``passrate.checker`` (math | exact | numeric | code |
task:SPEC), or for ``task:`` data the task's own verifier, else math-verify. Two columns are added:

- ``pass_rate``: the share of the k completions that are correct — an unbiased estimate of the
  model's pass@1 on the prompt at that temperature, in steps of 1/k (null for a prompt longer than
  ``passrate.max_prompt_tokens``, which is not sampled);
- ``mean_length``: the mean number of generated tokens.

The sampling and bookkeeping are `posttrain.eval.harness.evaluate`'s: ``samples.jsonl`` gets one
line per finished prompt, a batch at a time, with a per-batch seed, so a run stopped part way and
restarted with the same ``--out`` (``--resume`` is the default) samples only the missing prompts and
gives the same columns as a straight run; ``settings.json`` records the model, sampling and data,
and a resume with other settings is refused. ``results.json`` holds the eval metrics of the same
samples (pass@1, mean length, no-answer and truncation counts, tokens/s).

This is the offline difficulty estimate DAPO (Yu et al. 2025), Polaris and Skywork-OR1 filter on
before RL ("keep 0 < p < 1": `posttrain data filter --filter.min_pass_rate 0 --filter.max_pass_rate 1
--filter.band exclusive`), and the difficulty signal of s1-style selection (`posttrain data select`).
Departures: DAPO filters online, per step, from the rollouts it trains on (`posttrain rl` does that
with ``--rl.zero_variance_filter``); here the estimate is made once, before training, from the base
model. A text prompt is sent as it is (``--passrate.chat`` wraps it as one user message for a chat
model), as the training stages send it.
"""
from __future__ import annotations

import time
from pathlib import Path

from posttrain.config import ConfigError
from posttrain.data.sources import DataError
from posttrain.datatools.config import DataToolsConfig
from posttrain.datatools.stage import check_out, write_outputs
from posttrain.datatools.table import Item, Table, load_table
from posttrain.logging import console

PASS_RATE, MEAN_LENGTH = "pass_rate", "mean_length"


def problems_of(table: Table, cfg: DataToolsConfig):
    """(LoadedBenchmark over the table's rows, the checker's name); a row without an answer (or tests,
    for the code checker) is a DataError naming file, row and field."""
    from posttrain.eval.benchmarks import Benchmark, LoadedBenchmark, Problem, _apply_template, get_checker

    p = cfg.passrate
    checker = p.checker or (f"task:{cfg.data.path[len('task:'):]}" if table.task is not None else "math")
    extract, match = get_checker(checker)
    if p.template and "{prompt}" not in p.template:
        raise ConfigError(f"passrate.template {p.template!r} has no {{prompt}} placeholder")
    problems = []
    for it in table.items:
        prompt = it.ex.prompt
        if prompt is None:
            raise DataError(f"{it.row.where('prompt')}: no prompt (passrate samples completions of each row's prompt)")
        if p.chat and isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        prompt = _apply_template(prompt, p.template)
        if checker == "code":
            from posttrain.eval.code import code_gold

            try:
                gold = code_gold(it.view, prompt)
            except ValueError:
                raise DataError(f"{it.row.where('test')}: no tests for --passrate.checker code (a column test (+ entry_point), "
                                "test_list or input_output)") from None
        else:
            ans = it.ex.answer if it.ex.answer is not None else it.view.get("answer")
            if ans is None or not str(ans).strip():
                raise DataError(f"{it.row.where('answer')}: missing or empty reference answer (passrate checks each "
                                "completion against it; map your column with --data.columns NAME=answer)")
            gold = str(ans).strip()
        problems.append(Problem(str(it.index), prompt, gold))
    bench = Benchmark(f"data:{Path(cfg.data.path).name}", None, None, extract, match)
    return LoadedBenchmark(bench, problems, table.source, table.rows,
                           options={"checker": checker, "template": p.template, "chat": p.chat,
                                    "columns": dict(cfg.data.columns), "limit": cfg.data.limit}), checker


def columns_from_samples(records: dict[str, dict]) -> dict[str, dict]:
    """problem id -> {pass_rate, mean_length} from eval's samples.jsonl records."""
    out = {}
    for pid, r in records.items():
        s = r["samples"]
        out[pid] = {PASS_RATE: sum(x["correct"] for x in s) / len(s), MEAN_LENGTH: sum(x["tokens"] for x in s) / len(s)}
    return out


def run(cfg: DataToolsConfig, model=None, tokenizer=None, engine=None) -> dict:
    """`model` / `tokenizer` / `engine`: given in-process (tests, the demo) instead of loading --model."""
    from posttrain.configs import EvalSampling
    from posttrain.eval.harness import _read_done, evaluate

    out = check_out(cfg, extra=("samples.jsonl", "settings.json"))
    table = load_table(cfg.data)
    loaded, checker = problems_of(table, cfg)
    if cfg.overwrite:
        for name in ("samples.jsonl", "settings.json", "results.json", "results.md"):
            (out / name).unlink(missing_ok=True)
    p = cfg.passrate
    sampling = EvalSampling(n=p.k, ks=(1,), greedy=False, temperature=p.temperature, top_p=p.top_p,
                            max_new_tokens=p.max_new_tokens, seed=cfg.seed, problems_per_batch=p.prompts_per_batch,
                            sequences_per_batch=p.sequences_per_batch)
    if model is None:
        from posttrain.models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    console.print(f"data passrate: {len(loaded.problems)} prompts from {table.source}, k={p.k} at T={p.temperature}, "
                  f"checker {checker}")
    t0 = time.perf_counter()
    result = evaluate(model, tokenizer, loaded, sampling, out, resume=cfg.resume and not cfg.overwrite,
                      progress=cfg.progress, model_name=cfg.model.name, engine=engine, max_prompt_tokens=p.max_prompt_tokens)
    seconds = time.perf_counter() - t0
    cols = columns_from_samples(_read_done(out / "samples.jsonl"))
    rates = []
    for it in table.items:
        c = cols.get(str(it.index), {PASS_RATE: None, MEAN_LENGTH: None})
        it.added.update(c)
        if c[PASS_RATE] is not None:
            rates.append(c[PASS_RATE])
    hist = {"0": sum(r == 0 for r in rates), "between": sum(0 < r < 1 for r in rates), "1": sum(r == 1 for r in rates)}
    m = result["metrics"]
    report = {"cmd": "passrate", "model": cfg.model.name, "k": p.k, "temperature": p.temperature, "checker": checker,
              "scored": len(rates), "not_scored_long_prompt": len(table.items) - len(rates),
              "mean_pass_rate": sum(rates) / len(rates) if rates else None, "pass_rate_counts": hist,
              "mean_length": m.get("avg_tokens"), "no_answer": m.get("no_answer"), "truncated": m.get("truncated"),
              "tokens_per_s": m.get("tokens_per_s"), "seconds": seconds}
    md = ["| prompts scored | mean pass rate | p = 0 | 0 < p < 1 | p = 1 | mean tokens | tokens/s | seconds |",
          "|---|---|---|---|---|---|---|---|",
          f"| {len(rates)} | {report['mean_pass_rate'] or 0:.3f} | {hist['0']} | {hist['between']} | {hist['1']} | "
          f"{report['mean_length'] or 0:.1f} | {report['tokens_per_s'] or 0:.1f} | {seconds:.1f} |"]
    return write_outputs(out, table, list(table.items), [], report, md)


__all__ = ["run", "problems_of", "columns_from_samples", "PASS_RATE", "MEAN_LENGTH", "Item"]
