"""The test-time scaling table: accuracy against generated tokens for greedy decoding, self-consistency
(maj@k), PRM best-of-k, PRM-weighted voting and PRM beam search on a task's held-out problems.

Methods and papers: maj@k, Wang et al. 2022; best-of-N with a PRM (min over steps), Lightman et al.
2023; PRM-weighted voting and step-level beam search, Snell et al. 2024 (`posttrain.search`).

Comparable budgets: maj@k, best-of-k and weighted vote at one k read the *same* first k samples of
each problem (so their token counts are identical); beam search reports the tokens it generated.
Tokens are generated tokens per problem (prompt tokens and PRM compute not counted). Each row also
keeps the per-problem outcomes (`correct`), so two methods can be compared on the same problems
(`paired_comparison`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from posttrain.eval.benchmarks import task_benchmark
from posttrain.eval.metrics import vote
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.search import Policy, aggregate_steps, prm_beam_search, split_steps

__all__ = ["scaling_table", "scaling_rows", "plot_scaling", "scaling_markdown", "paired_comparison"]


def _user_text(prompt) -> str:
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


def scaling_rows(
    policy_model, tokenizer, prm_scorer, task: str, n_problems: int = 100, *, ks: Sequence[int] = (1, 4, 16),
    beams: Sequence[tuple[int, int]] = ((2, 2), (4, 4)), temperature: float = 1.0, max_new_tokens: int = 64,
    step_sep: str = "\n", step_agg: str = "min", seed: int = 0, sequences_per_batch: int = 256,
    beam_max_steps: int = 16, problem_seed: int = 2,
) -> list[dict]:
    """Rows {method, budget, accuracy, tokens_per_problem, problems, correct} (see the module docstring).

    `task` is a task spec ('addition:scratchpad=1'); `beams` lists (num_beams, expansions_per_beam);
    the problems are the task's held-out `eval_rows(n_problems, seed=problem_seed)` (2: the task's default).
    """
    bench = task_benchmark(task)
    problems = bench.task.eval_rows(n_problems, seed=problem_seed)
    prompts = [_user_text(r["prompt"]) for r in problems]
    golds = [str(r["answer"]) for r in problems]
    engine = HFEngine(policy_model, tokenizer, sequences_per_batch=sequences_per_batch)
    policy = Policy(engine, tokenizer, chat=True)
    ids = [policy.encode_prompt(p) for p in prompts]

    rows: list[dict] = []
    greedy = engine.generate(ids, SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    acc = [bench.task.verify(g[0].text, gold) for g, gold in zip(greedy, golds)]
    rows.append(_row("greedy", 1, acc, [len(g[0].token_ids) for g in greedy]))
    K = max(ks)
    samples = engine.generate(ids, SamplingParams(n=K, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed))
    answers = [[bench.extract(c.text) for c in group] for group in samples]
    scores = [[aggregate_steps(s, step_agg) for s in prm_scorer.score_steps(p, [split_steps(c.text, step_sep) for c in group])]
              for p, group in zip(prompts, samples)]
    for k in sorted(ks):
        toks = [sum(len(c.token_ids) for c in group[:k]) for group in samples]
        maj, bon, wv = [], [], []
        for ans, sc, gold in zip(answers, scores, golds):
            winner = vote(ans[:k], match=bench.group).answer
            maj.append(winner is not None and bench.match(winner, gold))
            best = max(range(k), key=lambda i: (sc[i], -i))
            bon.append(ans[best] is not None and bench.match(ans[best], gold))
            weighted = vote(ans[:k], sc[:k], match=bench.group).answer
            wv.append(weighted is not None and bench.match(weighted, gold))
        rows += [_row("maj@k", k, maj, toks), _row("prm_best_of_k", k, bon, toks), _row("prm_weighted_vote", k, wv, toks)]
    for nb, ex in beams:
        acc, toks = [], []
        for i, (p, gold) in enumerate(zip(prompts, golds)):
            r = prm_beam_search(policy, p, prm_scorer, num_beams=nb, expansions_per_beam=ex, max_steps=beam_max_steps,
                                max_step_tokens=max_new_tokens, temperature=temperature, step_sep=step_sep,
                                seed=seed * 100_003 + i, extract=bench.extract)
            acc.append(r.answer is not None and bench.match(r.answer, gold))
            toks.append(r.tokens_spent)
        rows.append(_row("prm_beam_search", nb * ex, acc, toks))
    return rows


def _row(method: str, budget: int, correct: list[bool], tokens: list[int]) -> dict:
    n = len(correct)
    return {"method": method, "budget": budget, "accuracy": sum(map(bool, correct)) / n,
            "tokens_per_problem": sum(tokens) / n, "problems": n, "correct": [int(bool(c)) for c in correct]}


def paired_comparison(a: dict, b: dict) -> dict:
    """Row `a` against row `b` on the same problems: the accuracy difference, the problems only one
    of them solves, and a 95% interval for the difference (normal approximation, paired)."""
    if a["problems"] != b["problems"]:
        raise ValueError("rows are over different problem counts")
    d = [x - y for x, y in zip(a["correct"], b["correct"])]
    n = len(d)
    mean = sum(d) / n
    se = (sum((x - mean) ** 2 for x in d) / max(n - 1, 1) / n) ** 0.5
    return {"difference": mean, "only_a": d.count(1), "only_b": d.count(-1), "ci95": (mean - 1.96 * se, mean + 1.96 * se)}


def plot_scaling(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """PNG of accuracy against generated tokens per problem, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["tokens_per_problem"], r["accuracy"], r["budget"]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        for x, y, b in pts:
            ax.annotate(str(b), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "test-time scaling")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def scaling_markdown(rows: list[dict]) -> str:
    lines = ["| method | budget (samples) | accuracy | generated tokens / problem |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['budget']} | {r['accuracy']:.3f} | {r['tokens_per_problem']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def scaling_table(policy_model, tokenizer, prm_scorer, task: str, n_problems: int = 100, *,
                  out_dir: str | Path = "runs/scaling", **options) -> tuple[list[dict], Path]:
    """`scaling_rows` plus `out_dir/scaling.png`, `scaling.json` and `scaling.md`; returns (rows, png path)."""
    import json

    rows = scaling_rows(policy_model, tokenizer, prm_scorer, task, n_problems, **options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(rows, indent=1))
    (out / "scaling.md").write_text(scaling_markdown(rows))
    return rows, plot_scaling(rows, out / "scaling.png", f"{task}: {n_problems} held-out problems")
