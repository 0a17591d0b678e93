"""`posttrain demo`: the whole pipeline on a from-scratch tiny model, offline, on 2 CPU cores.

SFT on a built-in task first; then each later stage (preference optimization, online RL) starts
from a copy of the SFT model, so the report compares them side by side against the same start. The run folder gets each stage's
metrics, `curves.png`, `report.md` and `summary.json`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain.logging import console, read_metrics
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    task: str = "addition:scratchpad=2"  # 3-digit addition, one column per line with the running result, then "#### sum"
    model: str = "tiny-llama:d=128,l=4,h=4"
    seed: int = 0
    sft_steps: int = 700  # the schedule's length; SFT stops early at sft_target_accuracy
    sft_target_accuracy: float = 0.95
    sft_eval_every: int = 50
    sft_lr: float = 3e-3
    sequences_per_step: int = 64
    eval_problems: int = 200
    stages: tuple[str, ...] = ("sft", "dpo", "rl")
    dpo_steps: int = 60
    dpo_problems: int = 640  # problems whose right solution is paired with the model's own wrong sample
    dpo_lr: float = 2e-5
    rl_steps: int = 30
    rl_lr: float = 2e-4
    progress: bool = True


def _sft_config(cfg: DemoConfig, run_dir: Path) -> SFTConfig:
    return SFTConfig(
        model=ModelConfig(name=cfg.model),
        data=DataConfig(path=f"task:{cfg.task}", train_rows=50000, eval_rows=cfg.eval_problems),
        optim=OptimConfig(lr=cfg.sft_lr, warmup_steps=50, min_lr_ratio=0.05),
        train=TrainConfig(out=str(run_dir / "sft"), max_steps=cfg.sft_steps, seed=cfg.seed,
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
        train=TrainConfig(out=str(run_dir / "dpo"), max_steps=cfg.dpo_steps, seed=cfg.seed, progress=cfg.progress),
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
        optim=OptimConfig(lr=cfg.rl_lr, schedule="constant"),
        train=TrainConfig(out=str(run_dir / "rl"), max_steps=cfg.rl_steps, seed=cfg.seed, progress=cfg.progress),
        rl=RLOptions(prompts_per_step=16, samples_per_prompt=8, max_new_tokens=64, show_every=10),
    )
    r = run_rl_stage(model, tokenizer, rcfg)
    png = plot_rl(run_dir, r["curves"])
    return {"accuracy": r.get("eval_after"), "before": r.get("eval_before"), "steps": cfg.rl_steps,
            "report_lines": [f"GRPO: held-out exact match {r.get('eval_before') or 0:.3f} -> {r.get('eval_after') or 0:.3f}.", "",
                             f"![reward and length]({png.name})", ""]}


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


STAGES = {"dpo": _dpo_stage, "rl": _rl_stage}


def run_demo(cfg: DemoConfig) -> dict:
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"demo config: {json.dumps(dataclasses.asdict(cfg))}")
    summary: dict = {"config": dataclasses.asdict(cfg), "stages": {}}
    t0 = time.perf_counter()
    sft = SFTTrainer(_sft_config(cfg, run_dir))
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
        summary["stages"][name] = {**STAGES[name](cfg, run_dir, model, tokenizer), "seconds": time.perf_counter() - t1}
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
