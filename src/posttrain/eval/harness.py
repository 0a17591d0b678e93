"""`posttrain eval`: sampled evaluation of a model on a named benchmark, resumable, on the training engine.

For every problem: one greedy completion (temperature 0) when `sampling.greedy`, and `sampling.n`
sampled completions at the recorded temperature / top-p / seed, all from `posttrain.rollout.HFEngine`
(the engine RL training uses), prompts rendered with the tokenizer's chat template. Each completion's
final answer is extracted and checked by the benchmark (math-verify for math, see
`posttrain.eval.benchmarks`). Metrics (`posttrain.eval.metrics`): greedy accuracy, unbiased pass@k
(Chen et al. 2021), maj@k (self-consistency, Wang et al. 2022), mean@k, average generated tokens,
completions with no extractable answer (scored wrong, counted), truncated completions, tokens/s.

Resuming: `out/samples.jsonl` gets one line per finished problem, written a batch of problems at a
time; a restart with `--resume` (the default) reads it, drops a torn last line, checks that the
recorded settings (`out/settings.json`) equal the current ones, and generates only the missing
problems. Problems are batched in a fixed order with a per-batch seed derived from the run seed and
the batch's first problem, so a run resumed after a crash gives the same samples as a straight run.

Outputs: `out/results.json` (settings, metrics, counts) and `out/results.md` (a markdown table).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.eval.benchmarks import LoadedBenchmark, Problem, load_benchmark
from posttrain.eval.metrics import ProblemSamples, Sample, aggregate_metrics
from posttrain.logging import ProgressBar, console, warn
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.trainers.common import ModelConfig

__all__ = ["EvalConfig", "EvalData", "EvalSampling", "EvalRun", "evaluate", "markdown_table", "run"]


@dataclass(frozen=True)
class EvalData:
    path: str = ""  # explicit benchmark file; empty: the benchmark's default file under `root`
    root: str = ""  # data root; empty: $POSTTRAIN_DATA, else ../shared/data from the CWD
    limit: int = 0  # first N problems (0: all; generated tasks: 200)
    on_error: str = "raise"  # or "skip": rows without a gold answer are skipped and counted


@dataclass(frozen=True)
class EvalSampling:
    n: int = 4  # sampled completions per problem (0: greedy only)
    ks: tuple[int, ...] = (1, 4)  # k values for pass@k / maj@k / mean@k (those > n are dropped)
    greedy: bool = True
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    problems_per_batch: int = 8
    sequences_per_batch: int = 32


@dataclass(frozen=True)
class EvalRun:  # named `train` in EvalConfig so that --out / --resume mean the same on every stage
    out: str = "runs/eval"
    resume: bool = True
    progress: bool = True


@dataclass(frozen=True)
class EvalConfig:
    benchmark: str = "gsm8k"  # a registered name (gsm8k, math500, aime24, ...), or task:SPEC
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="smollm2-135m-instruct"))
    data: EvalData = field(default_factory=EvalData)
    sampling: EvalSampling = field(default_factory=EvalSampling)
    train: EvalRun = field(default_factory=EvalRun)


def _prompt_ids(tokenizer, prompt) -> list[int]:
    from posttrain.data import encode_prompt

    if isinstance(prompt, list) and getattr(tokenizer, "chat_template", None) is None:
        prompt = "\n".join(m["content"] for m in prompt)
    return encode_prompt(tokenizer, prompt)


def _batch_seed(seed: int, first_id: str) -> int:
    import hashlib

    return int(hashlib.sha1(f"{seed}|{first_id}".encode()).hexdigest()[:8], 16)


def _record(bench, problem: Problem, greedy, samples) -> dict:
    def one(c) -> dict:
        ans = bench.extract(c.text)
        ok = ans is not None and bool(bench.match(ans, problem.gold))
        return {"text": c.text, "answer": ans, "tokens": len(c.token_ids), "correct": ok, "finish": c.finish_reason}

    return {"id": problem.id, "gold": problem.gold, "greedy": one(greedy) if greedy else None,
            "samples": [one(c) for c in samples]}


def _generate_batch(engine, tokenizer, bench, problems: list[Problem], s: EvalSampling) -> list[dict]:
    ids = [_prompt_ids(tokenizer, p.prompt) for p in problems]
    seed = _batch_seed(s.seed, problems[0].id)
    greedy = [None] * len(problems)
    if s.greedy:
        outs = engine.generate(ids, SamplingParams(n=1, temperature=0.0, max_new_tokens=s.max_new_tokens))
        greedy = [o[0] for o in outs]
    sampled = [[] for _ in problems]
    if s.n > 0:
        params = SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=seed)
        sampled = engine.generate(ids, params)
    return [_record(bench, p, g, c) for p, g, c in zip(problems, greedy, sampled)]


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
            raise ValueError(f"{path}: line {i + 1} is not valid JSON; delete the file or run with --resume false") from None
        done[str(rec["id"])] = rec
    return done


def _settings(cfg_model: str, loaded: LoadedBenchmark, s: EvalSampling) -> dict:
    return json.loads(json.dumps({"model": cfg_model, "benchmark": loaded.benchmark.name, "source": loaded.source,
                                  "sampling": dataclasses.asdict(s)}))  # tuples -> lists, as read back


def _prepare_out(out: Path, settings: dict, resume: bool) -> dict[str, dict]:
    out.mkdir(parents=True, exist_ok=True)
    spath, samples = out / "settings.json", out / "samples.jsonl"
    if resume and spath.exists():
        old = json.loads(spath.read_text())
        keys = ("model", "benchmark", "sampling")
        if any(old.get(k) != settings.get(k) for k in keys):
            raise ValueError(f"{spath}: recorded settings differ from this run's ({ {k: old.get(k) for k in keys} } vs "
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
    return out


def evaluate(model, tokenizer, loaded: LoadedBenchmark, sampling: EvalSampling, out: str | Path,
             resume: bool = True, progress: bool = True, model_name: str = "", engine=None) -> dict:
    """Evaluate `model` on `loaded` (see the module docstring); returns the results dict.

    `engine` replaces the default `HFEngine(model, tokenizer)` (any `RolloutEngine`)."""
    if sampling.n < 0 or (sampling.n == 0 and not sampling.greedy):
        raise ValueError("sampling.n must be >= 1, or 0 with sampling.greedy true")
    out = Path(out)
    settings = _settings(model_name, loaded, sampling)
    done = _prepare_out(out, settings, resume)
    todo = [p for p in loaded.problems if p.id not in done]
    if done:
        console.print(f"eval: resuming, {len(loaded.problems) - len(todo)}/{len(loaded.problems)} problems already done")
    engine = engine or HFEngine(model, tokenizer, sequences_per_batch=sampling.sequences_per_batch)
    gen_tokens, t0 = 0, time.perf_counter()
    with ProgressBar(len(loaded.problems), f"eval {loaded.benchmark.name}", progress, start=len(loaded.problems) - len(todo)) as bar, \
            open(out / "samples.jsonl", "a") as f:
        for i in range(0, len(todo), sampling.problems_per_batch):
            recs = _generate_batch(engine, tokenizer, loaded.benchmark, todo[i : i + sampling.problems_per_batch], sampling)
            f.write("".join(json.dumps(r) + "\n" for r in recs))
            f.flush()
            for r in recs:
                done[r["id"]] = r
                gen_tokens += sum(x["tokens"] for x in r["samples"]) + (r["greedy"]["tokens"] if r["greedy"] else 0)
            elapsed = time.perf_counter() - t0
            bar.update(len(loaded.problems) - len(todo) + i + len(recs), tok_s=gen_tokens / max(elapsed, 1e-9))
    elapsed = time.perf_counter() - t0
    records = [done[p.id] for p in loaded.problems]
    metrics = _metrics(loaded, records, sampling)
    metrics["tokens_per_s"] = gen_tokens / elapsed if gen_tokens else 0.0
    metrics["generated_tokens_this_run"] = gen_tokens
    result = {**settings, "metrics": metrics, "skipped_examples": loaded.first_errors}
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


HELP = "evaluate a model on a benchmark: greedy, pass@k, maj@k, mean@k, tokens (resumable)"
CONFIG = EvalConfig


def run(cfg: EvalConfig) -> dict:
    from posttrain.models import load_model_and_tokenizer

    loaded = load_benchmark(cfg.benchmark, cfg.data.path or None, cfg.data.root or None, cfg.data.limit, cfg.data.on_error)
    skipped = f" ({loaded.skipped} rows skipped)" if loaded.skipped else ""
    console.print(f"eval: {loaded.benchmark.name}: {len(loaded.problems)} problems from {loaded.source}{skipped}")
    for msg in loaded.first_errors:
        console.print(f"  skipped: {msg}")
    console.print(f"eval settings: {json.dumps(dataclasses.asdict(cfg.sampling))}")
    model, tokenizer = load_model_and_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    result = evaluate(model, tokenizer, loaded, cfg.sampling, cfg.train.out, cfg.train.resume, cfg.train.progress, cfg.model.name)
    console.print(markdown_table([result]))
    return result
