"""`posttrain demo`: the whole pipeline on a from-scratch tiny model, offline, on 2 CPU cores.

SFT on a built-in task first, from scratch. Preference optimization (RPO) and online RL (GRPO) then
each start from the same *mid-accuracy* snapshot of that SFT run (of the steps every `snapshot_every`
between the last evaluation below `mid_accuracy` and the first at or above it, the one whose held-out
greedy accuracy is closest to it), not from the solved final model, so that each has room to show a
gain. Beside them runs the control: SFT continued from that snapshot (its weights, optimizer state,
schedule position and data position, i.e. the SFT run going on as it did) for the same wall time as
each stage took, evaluated on the same held-out problems. The run folder gets each stage's metrics,
`accuracy_by_stage.png` (the report's first figure), `curves.png`, `report.md` and `summary.json`.

The last stage, test-time scaling, searches with a *weak* snapshot of the same SFT run (picked the
same way for `scaling_weak_accuracy`) and a PRM on the final SFT model, trained on
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
from posttrain.trainers.common import DataConfig, DataOrder, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer




def _sft_config(cfg: DemoConfig, run_dir: Path) -> SFTConfig:
    return SFTConfig(
        model=ModelConfig(name=cfg.model), runtime=cfg.runtime,
        data=DataConfig(path=f"task:{cfg.task}", train_rows=50000, eval_rows=cfg.eval_problems),
        optim=OptimConfig(lr=cfg.sft_lr, warmup_steps=50, min_lr_ratio=0.05),
        train=TrainConfig(overwrite=True, out=str(run_dir / "sft"), max_steps=cfg.sft_steps, seed=cfg.seed,
                          eval_every=cfg.sft_eval_every, progress=cfg.progress),
        sft=SFTOptions(sequences_per_step=cfg.sequences_per_step, sequences_per_microbatch=cfg.sequences_per_step,
                       eval_max_new_tokens=64, target_accuracy=cfg.sft_target_accuracy),
    )


def plot_curves(run_dir: Path, stage_metrics: dict[str, list[dict]], starts: dict[str, int]) -> Path:
    """Training loss and held-out accuracy against the step; a later stage's steps count on from the
    SFT step it starts at (`starts`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for stage, rows in stage_metrics.items():
        offset = starts.get(stage, 0)
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


def plot_accuracy_by_stage(run_dir: Path, summary: dict) -> Path:
    """The report's first figure: held-out accuracy of each stage at its start and end, with the
    time-matched continued-SFT control beside the stages that have one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = summary["stages"]
    fig, ax = plt.subplots(figsize=(2.2 * len(stages) + 2, 4.2))
    width = 0.27
    for i, (name, s) in enumerate(stages.items()):
        bars = [(-width, s.get("before"), "start", "0.75", None), (0.0, s.get("accuracy"), "after the stage", "tab:blue", None)]
        if "control" in s:
            bars.append((width, s["control"]["accuracy"], "control: SFT continued, same wall time", "white", "//"))
        for dx, value, label, color, hatch in bars:
            if value is None:
                continue
            ax.bar(i + dx, 100 * value, width, color=color, edgecolor="0.3", hatch=hatch, label=label if i == 0 or "control" in label else None)
            ax.text(i + dx, 100 * value + 1.5, f"{100 * value:.0f}", ha="center", fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper center", ncol=3)
    ax.set_xticks(range(len(stages)), [_stage_label(n, s) for n, s in stages.items()], fontsize=8)
    ax.set(ylabel="held-out exact match (%)", ylim=(0, 122), title="held-out accuracy by stage")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = run_dir / "accuracy_by_stage.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _stage_label(name: str, s: dict) -> str:
    if name == "sft":
        return "SFT\nfrom scratch"
    if name == "scaling":
        return f"test-time scaling\nSFT step {s['weak_step']},\n{s['best']['method']}@{s['best']['budget']}"
    title = {"dpo": "RPO (DPO + NLL)", "rl": "GRPO", "agent": "agent: GRPO in\nthe game, success"}.get(name, name)
    return f"{title}\nfrom SFT step {s['start_step']}" if "start_step" in s else title


def write_report(run_dir: Path, cfg: DemoConfig, summary: dict) -> Path:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    pts = lambda v: "-" if v is None else f"{100 * v:+.1f}"  # noqa: E731
    lines = [
        "# posttrain demo report", "",
        "![held-out accuracy by stage](accuracy_by_stage.png)", "",
        f"Task: `{cfg.task}`, model `{cfg.model}` (from scratch, seed {cfg.seed}), "
        f"{cfg.eval_problems} held-out problems (disjoint from training by construction), greedy exact match; "
        f"{summary['seconds']:.0f} s in all.", "",
    ]
    start = summary.get("start")
    if start:
        lines += [f"RPO and GRPO both start from the SFT model at step {start['step']} (held-out {pct(start['accuracy'])}, "
                  f"the snapshot closest to {pct(cfg.mid_accuracy)}), not from the final SFT model. The control is SFT "
                  "continued from that same snapshot (its optimizer state, schedule and data position: the SFT run going "
                  "on as it did) for as many seconds as the stage took in all, its own evaluation not counted.", ""]
    lines += ["| stage | starts from | before | after | gain (points) | steps | seconds | control: SFT, same time |",
              "|---|---|---|---|---|---|---|---|"]
    for stage, s in summary["stages"].items():
        origin = {"sft": "scratch", "scaling": f"SFT step {s.get('weak_step')}", "agent": "SFT on transcripts"}.get(stage, f"SFT step {s.get('start_step')}")
        c = s.get("control")
        control = f"{pct(c['accuracy'])} ({pts(c['gain'])}, {c['steps']} steps)" if c else "-"
        gain = None if s.get("before") is None or s.get("accuracy") is None else s["accuracy"] - s["before"]
        lines.append(f"| {stage} | {origin} | {pct(s.get('before'))} | {pct(s.get('accuracy'))} | {pts(gain)} | "
                     f"{s.get('steps', '-')} | {s['seconds']:.0f} | {control} |")
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
        model=ModelConfig(name=cfg.model), runtime=cfg.runtime,
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
        model=ModelConfig(name=cfg.model), runtime=cfg.runtime,
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
    """The SFT trainer, keeping in memory its training state (weights, optimizer, schedule, data
    position) every `every` steps between the last evaluation below each of `targets` (name -> held-out
    accuracy) and the first at or above it, so that later stages can start from an earlier, weaker
    model of the same run (`snapshot(name)`) and SFT can be continued from there (`continue_from`)."""

    def __init__(self, cfg: SFTConfig, targets: dict[str, float], every: int):
        super().__init__(cfg)
        self.targets, self.every = dict(targets), every
        self.snapshots: dict[int, dict] = {}  # step -> training state
        self.accuracy: dict[int, float] = {}  # step -> held-out greedy accuracy (evaluated steps)
        self.windows = {name: [0, None] for name in self.targets}  # name -> [last eval step below, first at/above]

    def _open(self) -> bool:
        return any(hi is None for _, hi in self.windows.values())

    def _state(self) -> dict:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "opt": copy.deepcopy(self.opt.state_dict()), "sched": copy.deepcopy(self.sched.state_dict()),
                "order": self.order.state(), "step": self.step}

    def _load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(copy.deepcopy(state["opt"]))
        self.sched.load_state_dict(copy.deepcopy(state["sched"]))
        self.order = DataOrder(len(self.train_examples), self.cfg.train.seed, **state["order"])
        self.step = state["step"]

    def _snap(self) -> None:
        if self.step not in self.snapshots:
            self.snapshots[self.step] = self._state()

    def train_step(self) -> dict:
        m = super().train_step()
        if self.step % self.every == 0 and self._open():
            self._snap()
        return m

    def evaluate(self) -> dict:
        m = super().evaluate()
        acc = m.get("eval/accuracy")
        if acc is not None and self._open():
            self._snap()
            self.accuracy[self.step] = acc
            for name, window in self.windows.items():
                if window[1] is None:
                    window[1 if acc >= self.targets[name] else 0] = self.step
            inside = lambda s: any(lo <= s and (hi is None or s <= hi) for lo, hi in self.windows.values())  # noqa: E731
            self.snapshots = {s: w for s, w in self.snapshots.items() if inside(s)}
        return m

    def _held_out_accuracy(self) -> float:
        from posttrain.trainers.common import exact_match_eval

        return exact_match_eval(self.model, self.tokenizer, self.answered, self.verify, self.cfg.sft.eval_max_new_tokens)["accuracy"]

    def snapshot(self, name: str) -> tuple[int, float, dict]:
        """(step, held-out greedy accuracy, training state) of the kept step before the last whose
        accuracy is closest to target `name`; kept steps that were not evaluated are evaluated now."""
        lo, hi = self.windows[name]
        kept = [s for s in self.snapshots if lo <= s and (hi is None or s <= hi)]
        final = self._state()
        try:
            for step in sorted(set(kept) - set(self.accuracy)):
                self.model.load_state_dict(self.snapshots[step]["model"])
                self.accuracy[step] = self._held_out_accuracy()
        finally:
            self.model.load_state_dict(final["model"])
        kept = [s for s in kept if s < self.step] or kept
        step = min(kept, key=lambda s: (abs(self.accuracy[s] - self.targets[name]), -s))
        return step, self.accuracy[step], self.snapshots[step]

    def continue_from(self, state: dict, budgets: dict[str, float]) -> dict[str, dict]:
        """The control: SFT continued from `state` as the run went on from there, its held-out accuracy
        taken when its training time passes each budget (name -> seconds; the evaluations are not
        counted); the trainer's own state is restored after. Returns name -> accuracy, steps, seconds."""
        final, out, trained = self._state(), {}, 0.0
        try:
            self._load(state)
            for name, budget in sorted(budgets.items(), key=lambda kv: kv[1]):
                while trained < budget:
                    t = time.perf_counter()
                    SFTTrainer.train_step(self)  # no snapshots here
                    trained += time.perf_counter() - t
                out[name] = {"accuracy": self._held_out_accuracy(), "steps": self.step - state["step"], "seconds": trained}
        finally:
            self._load(final)
        return out


def _scaling_stage(cfg: DemoConfig, run_dir: Path, model, tokenizer, weak: tuple[int, float, dict]) -> dict:
    """Test-time scaling with a weak SFT checkpoint as the policy and a PRM from the final SFT model
    (the module docstring); `model` is a copy of the final SFT model, `weak` = (step, accuracy, training state)."""
    from posttrain.eval.scaling import paired_comparison, scaling_markdown, scaling_table
    from posttrain.tasks import load_task_spec
    from posttrain.trainers.prm import PRMConfig, PRMOptions, PRMTrainer, task_prm_rows

    weak_step, weak_acc, state = weak
    policy = copy.deepcopy(model)
    policy.load_state_dict(state["model"])
    out = run_dir / "scaling"
    opts = PRMOptions(label_problems=cfg.scaling_label_problems, solutions_per_problem=cfg.scaling_solutions,
                      rollouts_per_step=cfg.scaling_rollouts, label_temperature=cfg.scaling_temperature,
                      label_max_new_tokens=64, sequences_per_step=32, sequences_per_microbatch=32,
                      likelihood_features=True, freeze_backbone=True)
    t0 = time.perf_counter()
    rows = task_prm_rows(load_task_spec(cfg.task), model, tokenizer, opts, cfg.seed, generator=policy, out_dir=out / "prm")
    label_s = time.perf_counter() - t0
    pcfg = PRMConfig(model=ModelConfig(name=cfg.model), runtime=cfg.runtime, data=DataConfig(path=f"task:{cfg.task}"),
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


def _agent_stage(cfg: DemoConfig, run_dir: Path, model, tokenizer) -> dict:
    """The agent recipe (`posttrain.envs.recipe`) on its own tiny model: SFT on the scripted player's
    won games of `agent_env`, then GRPO in the environment; held-out greedy success before and after.
    The demo's addition model is not used (it knows nothing of the game)."""
    from posttrain.envs.recipe import AgentRecipe, run_agent_recipe

    r = run_agent_recipe(AgentRecipe(out=str(run_dir / "agent"), env=cfg.agent_env, model=cfg.agent_model,
                                     sft_steps=cfg.agent_sft_steps, grpo_steps=cfg.agent_grpo_steps, lr=cfg.agent_lr,
                                     prompts=cfg.agent_prompts,
                                     eval_every=cfg.agent_grpo_steps, eval_rows=cfg.eval_problems, seed=cfg.seed,
                                     progress=cfg.progress))
    return {"accuracy": r["success_grpo"], "before": r["success_sft"], "steps": cfg.agent_grpo_steps,
            "report_lines": [f"Agent ({cfg.agent_env}): the scripted player won {r['transcripts']['player_success']:.3f} of "
                             f"{r['transcripts']['rows']} games; SFT on the {r['transcripts']['kept']} won ones "
                             f"({cfg.agent_sft_steps} steps), then GRPO: held-out greedy success "
                             f"{r['success_sft']:.3f} -> {r['success_grpo']:.3f}.", ""]}


STAGES = {"dpo": _dpo_stage, "rl": _rl_stage, "scaling": _scaling_stage, "agent": _agent_stage}
MID_STAGES = ("dpo", "rl")  # start from the mid-accuracy SFT snapshot, beside the continued-SFT control


def run_demo(cfg: DemoConfig) -> dict:
    from posttrain.runs import holds_run

    run_dir = Path(cfg.out)
    used = [s for s in ("sft", "dpo", "rl", "scaling/prm") if holds_run(run_dir / s)]
    if (used or (run_dir / "summary.json").exists()) and not cfg.overwrite:
        raise UserError(f"{run_dir} already holds a demo run ({', '.join(used) or 'summary.json'}); "
                        "pass --overwrite true to replace it, or pick another --out")
    unknown = [s for s in cfg.stages if s != "sft" and s not in STAGES]
    if unknown:
        raise ValueError(f"demo stage '{unknown[0]}' is not one of: sft, {', '.join(STAGES)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"demo config: {json.dumps(dataclasses.asdict(cfg))}")
    summary: dict = {"config": dataclasses.asdict(cfg), "stages": {}}
    t0 = time.perf_counter()
    targets = {"mid": cfg.mid_accuracy} if {"dpo", "rl"} & set(cfg.stages) else {}
    if "scaling" in cfg.stages:
        targets["weak"] = cfg.scaling_weak_accuracy
    sft = _SnapshotSFT(_sft_config(cfg, run_dir), targets, cfg.snapshot_every)
    before = sft.evaluate().get("eval/accuracy")
    result = sft.train()
    summary["stages"]["sft"] = {"accuracy": result.get("eval/accuracy"), "before": before, "steps": sft.step,
                                "seconds": time.perf_counter() - t0, "checkpoint": result["checkpoint"]}
    tokenizer = sft.tokenizer
    metrics = {"sft": read_metrics(run_dir / "sft" / "metrics.jsonl")}
    mid = sft.snapshot("mid") if "mid" in targets else None
    if mid is not None:
        summary["start"] = {"step": mid[0], "accuracy": mid[1]}
        console.print(f"demo: dpo and rl start from SFT step {mid[0]} (held-out {100 * mid[1]:.1f}%)")
    for name in cfg.stages:
        if name == "sft":
            continue
        t1 = time.perf_counter()
        model = copy.deepcopy(sft.model)  # the final SFT model (the scaling stage's PRM backbone) ...
        if name in MID_STAGES:
            model.load_state_dict(mid[2]["model"])  # ... or the mid-accuracy snapshot, for dpo and rl
        extra = (sft.snapshot("weak"),) if name == "scaling" else ()
        s = summary["stages"][name] = {**STAGES[name](cfg, run_dir, model, tokenizer, *extra), "seconds": time.perf_counter() - t1}
        if name in MID_STAGES:
            s.update(start_step=mid[0], gain=None if s["accuracy"] is None or s["before"] is None else s["accuracy"] - s["before"])
        if (run_dir / name / "metrics.jsonl").exists():
            metrics[name] = read_metrics(run_dir / name / "metrics.jsonl")
    timed = {n: s["seconds"] for n, s in summary["stages"].items() if n in MID_STAGES}
    if timed:
        console.print(f"demo: control, SFT continued from step {mid[0]} for {', '.join(f'{n} {t:.0f} s' for n, t in timed.items())}")
        t2 = time.perf_counter()
        for n, c in sft.continue_from(mid[2], timed).items():
            summary["stages"][n]["control"] = {**c, "gain": c["accuracy"] - mid[1]}
        summary["control_seconds"] = time.perf_counter() - t2
    summary["seconds"] = time.perf_counter() - t0
    plot_curves(run_dir, metrics, {n: mid[0] for n in MID_STAGES} if mid is not None else {})
    plot_accuracy_by_stage(run_dir, summary)
    report = write_report(run_dir, cfg, summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"demo done in {summary['seconds']:.0f}s: report {report}")
    for stage, s in summary["stages"].items():
        acc, c = s.get("accuracy"), s.get("control")
        console.print(f"  {stage:<8} accuracy {'-' if acc is None else f'{100 * acc:.1f}%'}"
                      + (f" (from {100 * s['before']:.1f}%; continued SFT for the same time: {100 * c['accuracy']:.1f}%)" if c else ""))
    return summary
