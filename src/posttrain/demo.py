"""`posttrain demo`: the whole pipeline on a from-scratch tiny model, offline, on 2 CPU cores.

SFT on a built-in task first; then each later stage (preference optimization, online RL) starts
from a copy of the SFT model, so the report compares them side by side against the same start. The run folder gets each stage's
metrics, `curves.png`, `report.md` and `summary.json`.

The last stage, test-time scaling, searches with a *weak* checkpoint of the same SFT run (of the
steps every `scaling_snapshot_every` after the last evaluation below `scaling_weak_accuracy`, the
one whose held-out greedy accuracy is closest to it) and a PRM on the final SFT model, trained on
Math-Shepherd automatic labels (Wang et al. 2024): the weak model's sampled solutions, each step
labelled by rollouts of the final SFT model from that step's prefix (a stronger completer than the
generator, as with Math-Shepherd's separate completer). The PRM is a head on the frozen final
model that reads the separator's hidden state and the step's and prefix's log-likelihoods under
that model (`posttrain.models.prm`, ``likelihood_features``; a plain fine-tuned head did not learn
to check the column sums, see BENCHMARKS.md). The report ends with greedy vs maj@k vs PRM
best-of-k vs PRM-weighted vote vs PRM beam search on held-out problems, and
`scaling/scaling.png` (accuracy against generated tokens).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

from posttrain.configs import DemoConfig  # noqa: F401  (re-exported)
from posttrain.logging import console, read_metrics
from posttrain.errors import UserError
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer




def _sft_config(cfg: DemoConfig, run_dir: Path) -> SFTConfig:
    return SFTConfig(
        model=ModelConfig(name=cfg.model),
        data=DataConfig(path=f"task:{cfg.task}", train_rows=50000, eval_rows=cfg.eval_problems),
        optim=OptimConfig(lr=cfg.sft_lr, warmup_steps=50, min_lr_ratio=0.05),
        train=TrainConfig(overwrite=True, out=str(run_dir / "sft"), max_steps=cfg.sft_steps, seed=cfg.seed,
                          eval_every=cfg.sft_eval_every, progress=cfg.progress),
        sft=SFTOptions(sequences_per_step=cfg.sequences_per_step, sequences_per_microbatch=cfg.sequences_per_step,
                       eval_max_new_tokens=64, target_accuracy=cfg.sft_target_accuracy),
    )


def plot_curves(run_dir: Path, stage_metrics: dict[str, list[dict]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    sft_end = max((r["step"] for r in stage_metrics.get("sft", [])), default=0)
    for stage, rows in stage_metrics.items():
        offset = 0 if stage == "sft" else sft_end  # later stages branch from the end of SFT
        train = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "eval/accuracy" in r]
        if train:
            ax_loss.plot([offset + r["step"] for r in train], [r["loss"] for r in train], label=stage, lw=1)
        if evals:
            ax_acc.plot([offset + r["step"] for r in evals], [100 * r["eval/accuracy"] for r in evals], "o-", label=stage)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    ax_acc.set(xlabel="step", ylabel="held-out exact match (%)", ylim=(0, 100), title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path, cfg: DemoConfig, summary: dict) -> Path:
    lines = [
        "# posttrain demo report", "",
        f"Task: `{cfg.task}`, model `{cfg.model}` (from scratch, seed {cfg.seed}), "
        f"{cfg.eval_problems} held-out problems (disjoint from training by construction).", "",
        "| stage | held-out accuracy before | after | steps | seconds |", "|---|---|---|---|---|",
    ]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for stage, s in summary["stages"].items():
        lines.append(f"| {stage} | {pct(s.get('before'))} | {pct(s.get('accuracy'))} | {s.get('steps', '-')} | {s['seconds']:.0f} |")
    lines += ["", "![curves](curves.png)", ""]
    for stage, s in summary["stages"].items():
        for extra in s.get("report_lines", []):
            lines.append(extra)
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _dpo_stage(cfg: DemoConfig, run_dir: Path, model, tokenizer) -> dict:
    """RPO (DPO plus an NLL term on the chosen solution) on the task's right solutions against the
    SFT model's own wrong samples; plain DPO on synthetic pairs collapses both logps on this task
    (see BENCHMARKS.md, Preference optimization)."""
    from posttrain.trainers.preference import PreferenceConfig, PreferenceOptions, run_preference_stage

    pcfg = PreferenceConfig(
        model=ModelConfig(name=cfg.model),
        data=DataConfig(path=f"task:{cfg.task}", train_rows=cfg.dpo_problems, eval_rows=cfg.eval_problems),
        optim=OptimConfig(lr=cfg.dpo_lr, schedule="constant"),
        train=TrainConfig(overwrite=True, out=str(run_dir / "dpo"), max_steps=cfg.dpo_steps, seed=cfg.seed, progress=cfg.progress),
        pref=PreferenceOptions(pairs_per_step=32, pairs_per_microbatch=32, eval_max_new_tokens=64, self_generated=2,
                               loss_args={"rpo_alpha": "10"}),
        loss="rpo", beta=0.1,
    )
    r = run_preference_stage(model, tokenizer, pcfg)
    return {"accuracy": r.get("eval/accuracy"), "before": r.get("eval_before/accuracy"), "steps": cfg.dpo_steps,
            "report_lines": [f"RPO (DPO + NLL): held-out preference accuracy {r.get('eval/rewards/accuracy', float('nan')):.3f}, "
                             f"exact match {r.get('eval_before/accuracy', float('nan')):.3f} -> {r.get('eval/accuracy', float('nan')):.3f}.", ""]}


def _rl_stage(cfg: DemoConfig, run_dir: Path, model, tokenizer) -> dict:
    """GRPO with the task's verifier as the reward, starting from the current model."""
    from posttrain.trainers.rl import RLConfig, RLOptions, run_rl_stage

    rcfg = RLConfig(
        algo="grpo",
        model=ModelConfig(name=cfg.model),
        data=DataConfig(path=f"task:{cfg.task}", train_rows=2000, eval_rows=cfg.eval_problems),
        optim=OptimConfig(lr=cfg.rl_lr, schedule="constant", warmup_steps=cfg.rl_warmup_steps),
        train=TrainConfig(overwrite=True, out=str(run_dir / "rl"), max_steps=cfg.rl_steps, seed=cfg.seed, progress=cfg.progress),
        rl=RLOptions(prompts_per_step=16, samples_per_prompt=8, max_new_tokens=64, show_every=10),
    )
    r = run_rl_stage(model, tokenizer, rcfg)
    png = plot_rl(run_dir, r["curves"])
    return {"accuracy": r.get("eval_after"), "before": r.get("eval_before"), "steps": cfg.rl_steps,
            "report_lines": [f"GRPO: held-out exact match {r.get('eval_before') or 0:.3f} -> {r.get('eval_after') or 0:.3f}.", "",
                             f"![reward and length]({png.name})", ""]}


class _SnapshotSFT(SFTTrainer):
    """The SFT trainer, keeping in memory a copy of the weights every `every` steps between the last
    evaluation below `target` held-out accuracy and the first at or above it, so that the scaling
    stage can search with an earlier, weaker model of the same run (`weak_snapshot`)."""

    def __init__(self, cfg: SFTConfig, keep: bool, every: int, target: float):
        super().__init__(cfg)
        self.keep, self.every, self.target = keep, every, target
        self.snapshots: dict[int, dict] = {}  # step -> state dict
        self.accuracy: dict[int, float] = {}  # step -> held-out greedy accuracy (evaluated steps)
        self.passed = False  # an evaluation reached the target: later steps are further from it

    def _snap(self) -> None:
        if self.keep and self.step not in self.snapshots:
            self.snapshots[self.step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def train_step(self) -> dict:
        m = super().train_step()
        if self.step % self.every == 0 and not self.passed:
            self._snap()
        return m

    def evaluate(self) -> dict:
        m = super().evaluate()
        acc = m.get("eval/accuracy")
        if self.keep and acc is not None and not self.passed:
            self._snap()
            self.accuracy[self.step] = acc
            if acc < self.target:  # earlier snapshots are further from the target: drop them
                self.snapshots = {s: w for s, w in self.snapshots.items() if s >= self.step}
            self.passed = acc >= self.target
        return m

    def weak_snapshot(self) -> tuple[int, float, dict]:
        """(step, held-out greedy accuracy, state dict) of the kept step before the last whose accuracy
        is closest to `target`; kept steps that were not evaluated are evaluated now."""
        from posttrain.trainers.common import exact_match_eval

        final = copy.deepcopy(self.model.state_dict())
        try:
            for step in sorted(set(self.snapshots) - set(self.accuracy)):
                self.model.load_state_dict(self.snapshots[step])
                self.accuracy[step] = exact_match_eval(self.model, self.tokenizer, self.answered, self.verify,
                                                       self.cfg.sft.eval_max_new_tokens)["accuracy"]
        finally:
            self.model.load_state_dict(final)
        kept = [s for s in self.snapshots if s < self.step] or list(self.snapshots)
        step = min(kept, key=lambda s: (abs(self.accuracy[s] - self.target), -s))
        return step, self.accuracy[step], self.snapshots[step]


def _scaling_stage(cfg: DemoConfig, run_dir: Path, model, tokenizer, weak: tuple[int, float, dict]) -> dict:
    """Test-time scaling with a weak SFT checkpoint as the policy and a PRM from the final SFT model
    (the module docstring); `model` is a copy of the final SFT model, `weak` = (step, accuracy, state)."""
    from posttrain.eval.scaling import paired_comparison, scaling_markdown, scaling_table
    from posttrain.tasks import load_task_spec
    from posttrain.trainers.prm import PRMConfig, PRMOptions, PRMTrainer, task_prm_rows

    weak_step, weak_acc, state = weak
    policy = copy.deepcopy(model)
    policy.load_state_dict(state)
    out = run_dir / "scaling"
    opts = PRMOptions(label_problems=cfg.scaling_label_problems, solutions_per_problem=cfg.scaling_solutions,
                      rollouts_per_step=cfg.scaling_rollouts, label_temperature=cfg.scaling_temperature,
                      label_max_new_tokens=64, sequences_per_step=32, sequences_per_microbatch=32,
                      likelihood_features=True, freeze_backbone=True)
    t0 = time.perf_counter()
    rows = task_prm_rows(load_task_spec(cfg.task), model, tokenizer, opts, cfg.seed, generator=policy, out_dir=out / "prm")
    label_s = time.perf_counter() - t0
    pcfg = PRMConfig(model=ModelConfig(name=cfg.model), data=DataConfig(path=f"task:{cfg.task}"),
                     optim=OptimConfig(lr=cfg.scaling_prm_lr, warmup_steps=10),
                     train=TrainConfig(overwrite=True, out=str(out / "prm"), max_steps=cfg.scaling_prm_steps, seed=cfg.seed,
                                       progress=cfg.progress, keep_checkpoints=1),
                     prm=opts)
    prm = PRMTrainer(pcfg, model, tokenizer, rows=rows)  # the final SFT model, frozen, is the PRM's backbone
    labels = [x for _, lab in prm.eval_set for x in lab]
    majority = max(sum(x >= 0.5 for x in labels), sum(x < 0.5 for x in labels)) / max(len(labels), 1)
    res = prm.train()
    beams = tuple(tuple(int(x) for x in b.split("x")) for b in cfg.scaling_beams)
    t1 = time.perf_counter()
    table, png = scaling_table(policy, tokenizer, prm.scorer(batch_size=64), cfg.task, cfg.scaling_problems, out_dir=out,
                               ks=cfg.scaling_k, beams=beams, max_new_tokens=64, temperature=cfg.scaling_temperature,
                               seed=cfg.seed, problem_seed=cfg.seed + 7, beam_max_steps=cfg.scaling_beam_max_steps)
    greedy = next(r["accuracy"] for r in table if r["method"] == "greedy")
    best = max(table, key=lambda r: (r["accuracy"], -r["tokens_per_problem"]))
    lines = [
        "## Test-time scaling", "",
        f"Policy: the SFT model at step {weak_step} (held-out greedy {100 * weak_acc:.1f}% at that evaluation), sampled at "
        f"T = {cfg.scaling_temperature}. PRM: the final SFT model (frozen) with a linear head on the step separator's "
        "hidden state and the step's and prefix's log-likelihoods under that model, trained "
        f"{cfg.scaling_prm_steps} steps on "
        f"Math-Shepherd labels ({cfg.scaling_label_problems} training problems x {cfg.scaling_solutions} solutions "
        f"of the step-{weak_step} model, {cfg.scaling_rollouts} rollouts of the final model per step prefix, soft "
        f"labels; {label_s:.0f} s); held-out step accuracy {res.get('eval/step_accuracy', float('nan')):.3f} "
        f"(majority class {majority:.3f}). {cfg.scaling_problems} held-out problems (task seed {cfg.seed + 7}); "
        "maj@k, best-of-k and weighted vote at one k use the same k samples. In the stage table above, "
        f"'before' is this policy's greedy accuracy on these problems and 'after' the best row ({best['method']} at "
        f"{best['budget']}).", "",
        scaling_markdown(table),
    ]
    by = {(r["method"], r["budget"]): r for r in table}
    K = max(cfg.scaling_k)
    pairs = [(("maj@k", K), ("greedy", 1)), (("prm_best_of_k", K), ("maj@k", K))]
    pairs += [(key, ("maj@k", K)) for key in by if key[0] == "prm_beam_search" and key[1] == K]
    compared = {}
    for a, b in pairs:
        c = compared[f"{a[0]}@{a[1]} - {b[0]}@{b[1]}"] = paired_comparison(by[a], by[b])
        lines.append(f"- {a[0]}@{a[1]} minus {b[0]}@{b[1]}: {c['difference']:+.3f} (95% interval {c['ci95'][0]:+.3f} to "
                     f"{c['ci95'][1]:+.3f}; {c['only_a']} problems solved only by the first, {c['only_b']} only by the second)")
    lines += ["", f"![accuracy vs generated tokens](scaling/{png.name})", ""]
    return {"accuracy": best["accuracy"], "before": greedy, "steps": cfg.scaling_prm_steps, "best": best, "paired": compared,
            "weak_step": weak_step, "weak_accuracy": weak_acc, "prm_step_accuracy": res.get("eval/step_accuracy"),
            "prm_majority_class": majority, "label_seconds": label_s, "table_seconds": time.perf_counter() - t1,
            "rows": table, "report_lines": lines}


def plot_rl(run_dir: Path, curves: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_l) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_r.plot(curves["step"], curves["reward_mean"], "o-", ms=3)
    ax_r.set(xlabel="RL step", ylabel="mean reward", title="reward")
    ax_l.plot(curves["step"], curves["completion_tokens_mean"], "o-", ms=3, color="tab:orange")
    ax_l.set(xlabel="RL step", ylabel="tokens", title="completion length")
    for ax in (ax_r, ax_l):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / "rl_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


STAGES = {"dpo": _dpo_stage, "rl": _rl_stage, "scaling": _scaling_stage}


def run_demo(cfg: DemoConfig) -> dict:
    from posttrain.runs import holds_run

    run_dir = Path(cfg.out)
    used = [s for s in ("sft", "dpo", "rl", "scaling/prm") if holds_run(run_dir / s)]
    if (used or (run_dir / "summary.json").exists()) and not cfg.overwrite:
        raise UserError(f"{run_dir} already holds a demo run ({', '.join(used) or 'summary.json'}); "
                        "pass --overwrite true to replace it, or pick another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"demo config: {json.dumps(dataclasses.asdict(cfg))}")
    summary: dict = {"config": dataclasses.asdict(cfg), "stages": {}}
    t0 = time.perf_counter()
    sft = _SnapshotSFT(_sft_config(cfg, run_dir), "scaling" in cfg.stages, cfg.scaling_snapshot_every, cfg.scaling_weak_accuracy)
    before = sft.evaluate().get("eval/accuracy")
    result = sft.train()
    summary["stages"]["sft"] = {"accuracy": result.get("eval/accuracy"), "before": before, "steps": sft.step,
                                "seconds": time.perf_counter() - t0, "checkpoint": result["checkpoint"]}
    tokenizer = sft.tokenizer
    metrics = {"sft": read_metrics(run_dir / "sft" / "metrics.jsonl")}
    for name in cfg.stages:
        if name == "sft":
            continue
        if name not in STAGES:
            raise ValueError(f"demo stage '{name}' is not one of: sft, {', '.join(STAGES)}")
        t1 = time.perf_counter()
        model = copy.deepcopy(sft.model)  # every later stage starts from the SFT model, side by side
        extra = (sft.weak_snapshot(),) if name == "scaling" else ()
        summary["stages"][name] = {**STAGES[name](cfg, run_dir, model, tokenizer, *extra), "seconds": time.perf_counter() - t1}
        if (run_dir / name / "metrics.jsonl").exists():
            metrics[name] = read_metrics(run_dir / name / "metrics.jsonl")
    plot_curves(run_dir, metrics)
    report = write_report(run_dir, cfg, summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"demo done in {time.perf_counter() - t0:.0f}s: report {report}")
    for stage, s in summary["stages"].items():
        acc = s.get("accuracy")
        console.print(f"  {stage:<8} accuracy {'-' if acc is None else f'{100 * acc:.1f}%'}")
    return summary
