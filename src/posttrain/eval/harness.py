"""`posttrain eval`: sampled evaluation of a model on a named benchmark, resumable, on the training engine.

For every problem: one greedy completion (temperature 0) when `sampling.greedy`, and `sampling.n`
sampled completions at the recorded temperature / top-p / seed, all from `posttrain.rollout.HFEngine`
(the engine RL training uses), prompts rendered with the tokenizer's chat template. Each completion's
final answer is extracted and checked by the benchmark (math-verify for math, see
`posttrain.eval.benchmarks`). Metrics (`posttrain.eval.metrics`): greedy accuracy, unbiased pass@k
(Chen et al. 2021), maj@k (self-consistency, Wang et al. 2022), mean@k, average generated tokens,
completions with no extractable answer (scored wrong, counted), truncated completions, tokens/s.
With ``--env NAME`` the stage plays episodes in a multi-turn environment instead (`posttrain.eval.env`).

Resuming: `out/samples.jsonl` gets one line per finished problem, written a batch of problems at a
time; a restart with `--resume` (the default) reads it, drops a torn last line, checks that the
recorded settings (`out/settings.json`) equal the current ones, and generates only the missing
problems. Problems are batched in a fixed order with a per-batch seed derived from the run seed and
the batch's first problem, so a run resumed after a crash gives the same samples as a straight run.

Outputs: `out/results.json` (settings, metrics, counts) and `out/results.md` (a markdown table).

Training-data overlap (``--train.check_overlap``, default true): when ``--model`` lies in a posttrain
run folder (``runs/x/checkpoints/step-N``, with the run's ``config.yaml`` one or two levels up), the
run's ``data.path`` is read and every problem sharing a 13-word sequence with it is counted
(`posttrain.datatools.decontam.eval_overlap`): a warning, and ``contamination`` in results.json.

Your own data: ``posttrain eval --data.path FILE --data.columns question=prompt,solution=answer
--data.checker math|exact|numeric|task:SPEC --data.template "...{prompt}..."`` (benchmark ``file``,
chosen when ``--benchmark`` is not given and any of columns / checker / template is; see
`posttrain.eval.benchmarks`). Without them ``--data.path`` alone still reads the file as gsm8k.

Prompt length (``data.max_prompt_tokens``, default 4096, capped at the model's
``max_position_embeddings``; ``data.on_long``): a longer prompt is skipped (default) or truncated to
its last tokens (the end of its longest text / message is kept, as TRL keeps the end of a prompt, so
the question's instruction and the chat template's generation prompt survive). Both are counted in
the results (``skipped_long_prompts``, ``truncated_prompts``). The check is cheap: a prompt with more
characters than ``max_prompt_tokens`` times the longest token of the vocabulary (in characters) cannot
fit and is skipped or cut without being tokenized whole (tokenizing a 5 MB string with a fast
tokenizer takes seconds and about 2 GB; generating on it took a process to 24 GB).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from posttrain.config import ConfigError
from posttrain.configs import EvalConfig, EvalData, EvalRun, EvalSampling  # noqa: F401  (re-exported)
from posttrain.data.sources import DataError
from posttrain.eval.benchmarks import FILE_BENCHMARK, LoadedBenchmark, Problem, load_benchmark
from posttrain.eval.metrics import ProblemSamples, Sample, aggregate_metrics
from posttrain.logging import ProgressBar, console, warn
from posttrain.rollout import HFEngine, SamplingParams

__all__ = ["EvalConfig", "EvalData", "EvalSampling", "EvalRun", "evaluate", "markdown_table", "run",
           "bound_prompt", "prompt_token_bound", "DEFAULT_MAX_PROMPT_TOKENS"]

DEFAULT_MAX_PROMPT_TOKENS = EvalData.max_prompt_tokens  # the dataclass default


def _prompt_ids(tokenizer, prompt) -> list[int]:
    from posttrain.data import encode_prompt

    if isinstance(prompt, list) and getattr(tokenizer, "chat_template", None) is None:
        prompt = "\n".join(m["content"] for m in prompt)
    return encode_prompt(tokenizer, prompt)


def prompt_token_bound(model, max_prompt_tokens: int) -> int:
    """The prompt bound in tokens: `max_prompt_tokens` (0: none) capped at the model's max positions; 0: unbounded."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    bounds = [b for b in (max_prompt_tokens, limit) if isinstance(b, int) and b > 0]
    return min(bounds) if bounds else 0


def _max_token_chars(tokenizer) -> int:
    """Characters the longest vocabulary entry can decode to (an upper bound: byte-level BPE entries
    have one character per byte, SentencePiece entries one per character)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # a tokenizer without a vocabulary listing: a generous guess
        return 64
    return max((len(t) for t in vocab), default=64) or 1


def _chars(prompt) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)


def _longest_text(prompt):
    """(the longest text of the prompt, a function that puts a replacement in its place)."""
    if isinstance(prompt, str):
        return prompt, lambda text: text
    j = max(range(len(prompt)), key=lambda i: len(prompt[i]["content"]))

    def rebuild(text):
        msgs = [dict(m) for m in prompt]
        msgs[j]["content"] = text
        return msgs

    return prompt[j]["content"], rebuild


def bound_prompt(tokenizer, prompt, max_tokens: int, on_long: str = "skip", chars_per_token: int | None = None):
    """(prompt token ids, truncated?) for a prompt of at most `max_tokens` tokens (0: no bound), or
    (None, False) when it is longer and `on_long` is "skip" (or it cannot be cut to fit).

    A prompt with more than ``max_tokens * chars_per_token`` characters is never tokenized whole.
    "truncate" keeps the end of the prompt's longest text (its last tokens) and re-renders the prompt."""
    if max_tokens <= 0:
        return _prompt_ids(tokenizer, prompt), False
    per = chars_per_token or _max_token_chars(tokenizer)
    if _chars(prompt) <= max_tokens * per:
        ids = _prompt_ids(tokenizer, prompt)
        if len(ids) <= max_tokens:
            return ids, False
    if on_long != "truncate":
        return None, False
    text, rebuild = _longest_text(prompt)
    budget = max_tokens - len(_prompt_ids(tokenizer, rebuild("")))
    if budget <= 0:
        return None, False
    # `budget * per` characters hold at least `budget` tokens: keep the last `budget` of them
    ids = tokenizer(text[-budget * per:], add_special_tokens=False)["input_ids"][-budget:]
    for _ in range(4):  # decoding and re-rendering can shift a token or two at the seams
        full = _prompt_ids(tokenizer, rebuild(tokenizer.decode(ids)))
        if len(full) <= max_tokens:
            return full, True
        ids = ids[len(full) - max_tokens:]
        if not ids:
            break
    return None, False


def _batch_seed(seed: int, first_id: str) -> int:
    import hashlib

    return int(hashlib.sha1(f"{seed}|{first_id}".encode()).hexdigest()[:8], 16)


def _record(bench, problem: Problem, greedy, samples, prompt_truncated: bool = False) -> dict:
    def one(c) -> dict:
        ans = bench.extract(c.text)
        ok = ans is not None and bool(bench.match(ans, problem.gold))
        return {"text": c.text, "answer": ans, "tokens": len(c.token_ids), "correct": ok, "finish": c.finish_reason}

    rec = {"id": problem.id, "gold": problem.gold, "greedy": one(greedy) if greedy else None,
           "samples": [one(c) for c in samples]}
    if prompt_truncated:
        rec["prompt_truncated"] = True
    return rec


def _generate_batch(engine, tokenizer, bench, problems: list[Problem], s: EvalSampling,
                    prompts: dict[str, tuple[list[int], bool]] | None = None) -> list[dict]:
    """`prompts`: problem id -> (prompt ids, truncated), from `bound_prompt`; missing ones are encoded here."""
    prompts = prompts or {}
    bounded = [prompts.get(p.id) or (_prompt_ids(tokenizer, p.prompt), False) for p in problems]
    ids = [b[0] for b in bounded]
    seed = _batch_seed(s.seed, problems[0].id)
    greedy = [None] * len(problems)
    if s.greedy:
        outs = engine.generate(ids, SamplingParams(n=1, temperature=0.0, max_new_tokens=s.max_new_tokens,
                                                   stop=bench.stop))
        greedy = [o[0] for o in outs]
    sampled = [[] for _ in problems]
    if s.n > 0:
        params = SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=seed,
                                stop=bench.stop)
        sampled = engine.generate(ids, params)
    return [_record(bench, p, g, c, b[1]) for p, g, c, b in zip(problems, greedy, sampled, bounded)]


def _read_done(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # torn last line from a crash mid-write: redo that problem
                warn(f"{path}: ignoring an incomplete last line")
                continue
            raise DataError(f"{path}: line {i + 1} is not valid JSON; delete the file or run with --resume false") from None
        done[str(rec["id"])] = rec
    return done


def _settings(cfg_model: str, loaded: LoadedBenchmark, s: EvalSampling, data: dict | None = None) -> dict:
    return json.loads(json.dumps({"model": cfg_model, "benchmark": loaded.benchmark.name, "source": loaded.source,
                                  "sampling": dataclasses.asdict(s), "data": {**loaded.options, **(data or {})}}))


def _prepare_out(out: Path, settings: dict, resume: bool) -> dict[str, dict]:
    out.mkdir(parents=True, exist_ok=True)
    spath, samples = out / "settings.json", out / "samples.jsonl"
    if resume and spath.exists():
        old = json.loads(spath.read_text())
        keys = ("model", "benchmark", "sampling") + (("data",) if "data" in old else ())  # older runs: no "data"
        if any(old.get(k) != settings.get(k) for k in keys):
            raise ConfigError(f"{spath}: recorded settings differ from this run's ({ {k: old.get(k) for k in keys} } vs "
                             f"{ {k: settings[k] for k in keys} }); use another --out or --resume false")
        done = _read_done(samples)
    else:
        done = {}
        samples.write_text("")
    spath.write_text(json.dumps(settings, indent=1))
    return done


def _metrics(loaded: LoadedBenchmark, records: list[dict], s: EvalSampling) -> dict:
    bench = loaded.benchmark
    ks = sorted({k for k in s.ks if 1 <= k <= s.n}) or ([1] if s.n >= 1 else [])
    probs = [ProblemSamples(r["gold"], [Sample(x["answer"], x["tokens"], x["correct"]) for x in r["samples"]],
                            Sample(r["greedy"]["answer"], r["greedy"]["tokens"], r["greedy"]["correct"]) if r["greedy"] else None)
             for r in records]
    out: dict = {}
    if ks:
        out = aggregate_metrics(probs, ks, match=bench.match, group=bench.group).as_dict()
    elif s.greedy:
        out = {"num_problems": float(len(probs)), "greedy_acc": sum(p.greedy.correct for p in probs) / len(probs),
               "avg_greedy_tokens": sum(p.greedy.num_tokens for p in probs) / len(probs)}
    every = [x for r in records for x in r["samples"] + ([r["greedy"]] if r["greedy"] else [])]
    out["no_answer"] = sum(x["answer"] is None for x in every)
    out["truncated"] = sum(x["finish"] == "length" for x in every)
    out["completions"] = len(every)
    out["skipped_rows"] = loaded.skipped
    out["truncated_prompts"] = sum(bool(r.get("prompt_truncated")) for r in records)
    return out


def _bound_todo(tokenizer, problems: list[Problem], max_tokens: int, on_long: str):
    """(problems to run, {id: (prompt ids, truncated)}, ids of the skipped long prompts)."""
    per = _max_token_chars(tokenizer) if max_tokens > 0 else 1
    kept, prompts, skipped = [], {}, []
    for p in problems:
        ids, cut = bound_prompt(tokenizer, p.prompt, max_tokens, on_long, per)
        if ids is None:
            skipped.append(p.id)
            continue
        kept.append(p)
        prompts[p.id] = (ids, cut)
    return kept, prompts, skipped


def evaluate(model, tokenizer, loaded: LoadedBenchmark, sampling: EvalSampling, out: str | Path,
             resume: bool = True, progress: bool = True, model_name: str = "", engine=None,
             max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, on_long: str = "skip", extra: dict | None = None) -> dict:
    """Evaluate `model` on `loaded` (see the module docstring); returns the results dict.

    `engine` replaces the default `HFEngine(model, tokenizer)` (any `RolloutEngine`). Prompts longer
    than `max_prompt_tokens` (capped at the model's max positions; 0: that cap only) are skipped, or
    with ``on_long="truncate"`` cut to their last tokens; both are counted in the metrics. `extra`: more
    keys for the results (the training-data overlap `run` finds)."""
    if sampling.n < 0 or (sampling.n == 0 and not sampling.greedy):
        raise ValueError("sampling.n must be >= 1, or 0 with sampling.greedy true")
    if on_long not in ("skip", "truncate"):
        raise ConfigError(f"data.on_long must be skip|truncate, got {on_long!r}")
    out = Path(out)
    bound = prompt_token_bound(model, max_prompt_tokens)
    settings = _settings(model_name, loaded, sampling, {"max_prompt_tokens": bound, "on_long": on_long})
    done = _prepare_out(out, settings, resume)
    todo, prompts, skipped = _bound_todo(tokenizer, [p for p in loaded.problems if p.id not in done], bound, on_long)
    problems = [p for p in loaded.problems if p.id in done or p.id in prompts]
    if skipped:
        warn(f"eval: skipped {len(skipped)} of {len(loaded.problems)} problems whose prompt is longer than {bound} tokens "
             f"(data.max_prompt_tokens; data.on_long=truncate keeps them, cut); first ids: {skipped[:5]}")
    if not problems:
        raise DataError(f"eval {loaded.benchmark.name}: all {len(loaded.problems)} prompts are longer than {bound} tokens "
                        "(data.max_prompt_tokens); raise it, or use --data.on_long truncate")
    cut = sum(c for _, c in prompts.values())
    if cut:
        console.print(f"eval: {cut} prompts truncated to their last {bound} tokens (data.on_long=truncate)")
    if done:
        console.print(f"eval: resuming, {len(problems) - len(todo)}/{len(problems)} problems already done")
    engine = engine or HFEngine(model, tokenizer, sequences_per_batch=sampling.sequences_per_batch)
    gen_tokens, t0 = 0, time.perf_counter()
    with ProgressBar(len(problems), f"eval {loaded.benchmark.name}", progress, start=len(problems) - len(todo)) as bar, \
            open(out / "samples.jsonl", "a") as f:
        for i in range(0, len(todo), sampling.problems_per_batch):
            recs = _generate_batch(engine, tokenizer, loaded.benchmark, todo[i : i + sampling.problems_per_batch], sampling, prompts)
            f.write("".join(json.dumps(r) + "\n" for r in recs))
            f.flush()
            for r in recs:
                done[r["id"]] = r
                gen_tokens += sum(x["tokens"] for x in r["samples"]) + (r["greedy"]["tokens"] if r["greedy"] else 0)
            elapsed = time.perf_counter() - t0
            bar.update(len(problems) - len(todo) + i + len(recs), tok_s=gen_tokens / max(elapsed, 1e-9))
    elapsed = time.perf_counter() - t0
    records = [done[p.id] for p in problems]
    metrics = _metrics(loaded, records, sampling)
    metrics["skipped_long_prompts"] = len(skipped)
    metrics["max_prompt_tokens"] = bound
    metrics["tokens_per_s"] = gen_tokens / elapsed if gen_tokens else 0.0
    metrics["generated_tokens_this_run"] = gen_tokens
    result = {**settings, "metrics": metrics, "skipped_examples": loaded.first_errors,
              "skipped_long_prompts": skipped[:20], **(extra or {})}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(markdown_table([result]))
    return result


def markdown_table(results: list[dict]) -> str:
    """One row per result: model, benchmark, problems, greedy, pass/maj/mean@k, tokens, no-answer share."""
    keys = sorted({k for r in results for k in r["metrics"] if k.split("@")[0] in ("pass", "maj", "mean")},
                  key=lambda k: (int(k.split("@")[1]), k))
    head = ["model", "benchmark", "problems", "greedy", *keys, "avg tokens", "no answer", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        m = r["metrics"]
        g = m.get("greedy_acc")
        cells = [r.get("model", ""), r["benchmark"], str(int(m["num_problems"])), f"{g:.3f}" if g is not None else "-",
                 *[f"{m[k]:.3f}" if k in m else "-" for k in keys],
                 f"{m.get('avg_tokens', m.get('avg_greedy_tokens', 0.0)):.1f}",
                 f"{m['no_answer']}/{m['completions']}", f"{m.get('tokens_per_s', 0.0):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


HELP = "evaluate a model on a benchmark: greedy, pass@k, maj@k, mean@k, tokens (resumable); or in an environment (--env)"
CONFIG = EvalConfig


def run(cfg: EvalConfig) -> dict:
    from posttrain.models import load_model_and_tokenizer

    if cfg.env:
        return run_env(cfg)
    d = cfg.data
    name = cfg.benchmark or (FILE_BENCHMARK if (d.columns or d.checker or d.template) else "gsm8k")
    loaded = load_benchmark(name, d.path or None, d.root or None, d.limit, d.on_error,
                            columns=d.columns, checker=d.checker, template=d.template)
    skipped = f" ({loaded.skipped} rows skipped)" if loaded.skipped else ""
    console.print(f"eval: {loaded.benchmark.name}: {len(loaded.problems)} problems from {loaded.source}{skipped}")
    for msg in loaded.first_errors:
        console.print(f"  skipped: {msg}")
    console.print(f"eval settings: {json.dumps(dataclasses.asdict(cfg.sampling))}")
    contamination = None
    if cfg.train.check_overlap:  # the model's run folder trained on these problems? (never raises)
        from posttrain.datatools.decontam import eval_overlap

        contamination = eval_overlap(cfg.model.name, loaded)
    from posttrain.runtime.support import place_for_inference

    model, tokenizer = load_model_and_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    rt, (model,) = place_for_inference(cfg, model)
    with rt.autocast():
        result = evaluate(model, tokenizer, loaded, cfg.sampling, cfg.train.out, cfg.train.resume, cfg.train.progress, cfg.model.name,
                          max_prompt_tokens=d.max_prompt_tokens, on_long=d.on_long,
                          extra={"contamination": contamination} if contamination else None)
    console.print(markdown_table([result]))
    return result


def run_env(cfg: EvalConfig) -> dict:
    """``posttrain eval --env NAME``: episodes in a multi-turn environment (`posttrain.eval.env`)."""
    from posttrain.data.sources import read_rows
    from posttrain.eval.env import evaluate_env, markdown_env_table
    from posttrain.models import load_model_and_tokenizer
    from posttrain.rollout.multiturn import EpisodeLimits
    from posttrain.runtime.support import place_for_inference

    if cfg.benchmark:
        raise ConfigError(f"eval: --env {cfg.env} and --benchmark {cfg.benchmark}: choose one")
    d, e = cfg.data, cfg.episode
    rows = None
    if d.path:  # the file's rows go to reset (each row's fields)
        rows = [r.data for r in read_rows(d.path, on_error=d.on_error) if r.error is None][: d.limit or None]
        if not rows:
            raise DataError(f"{d.path}: no rows for --env {cfg.env}")
    model, tokenizer = load_model_and_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    rt, (model,) = place_for_inference(cfg, model)
    limits = EpisodeLimits(max_turns=e.max_turns, max_episode_tokens=e.max_episode_tokens,
                           max_tool_output_tokens=e.max_tool_output_tokens, env_role=e.env_role)
    with rt.autocast():
        result = evaluate_env(model, tokenizer, cfg.env, cfg.sampling, limits, cfg.train.out, rows=rows, limit=d.limit,
                              success_reward=e.success_reward, timeout_s=e.env_timeout_s, model_name=cfg.model.name)
    console.print(markdown_env_table([result]))
    return result
