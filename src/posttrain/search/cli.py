"""`posttrain search`: run test-time search methods on a benchmark and report accuracy and tokens per method.

    posttrain search --benchmark task:addition:scratchpad=1 --model runs/sft --prm runs/prm \\
        --method greedy,majority_vote,best_of_n,prm_beam_search --search.n 16

Methods are the `posttrain.search.SEARCH_METHODS` entries plus ``greedy`` (one temperature-0
completion). Each method gets the options of `SearchOptions` that its signature accepts. Problems come
from the benchmark registry (`posttrain.eval.benchmarks`), answers are extracted and checked by the
benchmark; the policy runs on `posttrain.rollout.HFEngine` with the prompt as one chat user message.
Results: `out/search.json` and `out/search.md`.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

from posttrain.eval.benchmarks import load_benchmark
from posttrain.configs import SearchConfig, SearchOptions  # noqa: F401  (re-exported)
from posttrain.logging import ProgressBar, console
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.search.base import SEARCH_METHODS, Policy, SearchResult

__all__ = ["SearchConfig", "SearchOptions", "run_search", "run"]


def _options(fn, opts: SearchOptions, extract, group, seed: int) -> dict:
    from dataclasses import asdict

    accepted = inspect.signature(fn).parameters
    given = {**asdict(opts), "extract": extract, "match": group, "seed": seed}
    if "max_step_tokens" not in accepted:
        given.pop("max_step_tokens")
    return {k: v for k, v in given.items() if k in accepted}


def _greedy(policy: Policy, prompt: str, max_new_tokens: int, extract) -> SearchResult:
    start = policy.tokens_spent
    (group,) = policy.generate([policy.encode_prompt(prompt)], SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    text = policy.text_of(group[0])
    return SearchResult(extract(text), None, text, policy.tokens_spent - start, method="greedy")


def run_search(policy: Policy, scorer, loaded, methods, opts: SearchOptions, progress: bool = True) -> list[dict]:
    """Rows {method, accuracy, tokens_per_problem, no_answer, problems} over `loaded.problems`."""
    bench = loaded.benchmark
    rows = []
    for name in methods:
        fn = None if name == "greedy" else SEARCH_METHODS.get(name)
        correct = tokens = no_answer = 0
        with ProgressBar(len(loaded.problems), f"search {name}", progress) as bar:
            for i, p in enumerate(loaded.problems):
                prompt = p.prompt[-1]["content"] if isinstance(p.prompt, list) else p.prompt
                if fn is None:
                    r = _greedy(policy, prompt, opts.max_new_tokens, bench.extract)
                else:
                    r = fn(policy, prompt, scorer, **_options(fn, opts, bench.extract, bench.group, opts.seed * 100_003 + i))
                no_answer += r.answer is None
                correct += r.answer is not None and bool(bench.match(r.answer, p.gold))
                tokens += r.tokens_spent
                bar.update(i + 1, acc=correct / (i + 1))
        m = len(loaded.problems)
        rows.append({"method": name, "accuracy": correct / m, "tokens_per_problem": tokens / m,
                     "no_answer": no_answer, "problems": m})
    return rows


HELP = "test-time search (best-of-N, voting, PRM beam search, MCTS, budget forcing) on a benchmark"
CONFIG = SearchConfig


def run(cfg: SearchConfig) -> list[dict]:
    from posttrain.models import load_model_and_tokenizer

    for name in cfg.method:
        if name != "greedy":
            SEARCH_METHODS.get(name)  # unknown names fail before any model loads
    loaded = load_benchmark(cfg.benchmark, cfg.data.path or None, cfg.data.root or None, cfg.data.limit, cfg.data.on_error,
                            columns=cfg.data.columns, checker=cfg.data.checker, template=cfg.data.template)
    from posttrain.runtime.support import place_for_inference

    model, tok = load_model_and_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    scorer = prm = None
    if cfg.prm:
        from posttrain.models.prm import PRMScorer, load_prm

        prm, prm_tok = load_prm(cfg.prm)
        scorer = PRMScorer(prm, prm_tok)
    rt, (model, prm) = place_for_inference(cfg, model, prm)
    policy = Policy(HFEngine(model, tok), tok, chat=getattr(tok, "chat_template", None) is not None)
    with rt.autocast():
        rows = run_search(policy, scorer, loaded, cfg.method, cfg.search, cfg.train.progress)
    out = Path(cfg.train.out)
    out.mkdir(parents=True, exist_ok=True)
    table = ["| method | accuracy | tokens / problem | no answer |", "|---|---|---|---|"]
    table += [f"| {r['method']} | {r['accuracy']:.3f} | {r['tokens_per_problem']:.1f} | {r['no_answer']}/{r['problems']} |" for r in rows]
    (out / "search.json").write_text(json.dumps({"benchmark": loaded.benchmark.name, "model": cfg.model.name,
                                                 "prm": cfg.prm, "options": cfg.search.__dict__, "rows": rows}, indent=1))
    (out / "search.md").write_text("\n".join(table) + "\n")
    console.print("\n".join(table))
    return rows
