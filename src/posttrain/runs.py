"""Run folders: what a training stage may do with `train.out` before it loads a model.

`prepare_run(cfg, stage)` is the first thing every trainer does:
- a new run (no ``--resume``) into a folder that already holds a run is refused, unless
  ``--train.overwrite true``, which deletes that run's files (checkpoints, metrics, config, caches)
  and nothing else in the folder;
- ``--resume`` needs a complete checkpoint (a typo in ``--out`` is an error, not a fresh start), and
  compares the config with the run's saved ``config.yaml``: options that differ are refused, or with
  ``--train.resume_changes apply`` applied and listed. Options that only steer the run's length or
  reporting (``max_steps``, ``eval_every``, ``save_every``, ``progress``, ...) may change freely and are
  listed when they do, and so may the runtime placement (``runtime.device``, ``runtime.parallel``,
  ``runtime.timeout_s``: the same global batch gives the same update on any of them); a stage not yet
  on the runtime seam refuses non-default ``runtime.*`` options here (`posttrain.runtime.support`);
- ``metrics.jsonl`` is rewound to the checkpoint's step (lines logged after the last save would be
  logged again) and a torn last line is dropped, so a resumed run's metrics equal a straight run's;
- the resolved config is written to ``config.yaml`` (atomically); the CLI reads it back on
  ``--resume`` so that ``posttrain sft --out runs/sft --resume`` continues with the saved options.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from posttrain.checkpoint import checkpoint_steps, clean_temporary, latest_checkpoint, write_text_atomic
from posttrain.config import dump_yaml, flat_dict, from_dict, read_yaml
from posttrain.errors import UserError

CONFIG_FILE = "config.yaml"
RUN_FILES = ("metrics.jsonl", "prompt_rewards.jsonl", CONFIG_FILE, "reference_logps.pt", "tensorboard", "wandb", "mlruns")
# may differ on --resume without being a change of the experiment
FREE_ON_RESUME = ("train.resume", "train.overwrite", "train.resume_changes", "train.max_steps", "train.eval_every",
                  "train.save_every", "train.keep_checkpoints", "train.log_every", "train.loggers", "train.progress",
                  "train.progress_every_s",
                  # where a run computes, not what it computes: a run saved on 2 ddp ranks resumes on 1 CPU process
                  # (the global batch and its normalizers are the same); runtime.dtype is a real change (numerics)
                  "runtime.device", "runtime.parallel", "runtime.timeout_s")


def holds_run(out: Path) -> bool:
    """A folder holds a run once it has metrics or a checkpoint (a config.yaml alone is a start that
    failed before training, e.g. on a bad model path, and may be reused)."""
    metrics = out / "metrics.jsonl"
    return (metrics.exists() and metrics.stat().st_size > 0) or bool(checkpoint_steps(out))


def saved_config(cls, out: str | Path):
    """The config saved in run folder `out`, or None."""
    path = Path(out) / CONFIG_FILE
    if not path.exists():
        return None
    return from_dict(cls, read_yaml(path), where=str(path))


def config_changes(saved, cfg) -> dict[str, tuple]:
    old, new = flat_dict(saved), flat_dict(cfg)
    return {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}


def _describe(out: Path) -> str:
    steps = checkpoint_steps(out)
    what = f"checkpoints up to step {steps[-1]}" if steps else "no complete checkpoint"
    return f"{out} already holds a run ({what})"


def _clear(out: Path) -> None:
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _inside(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def prepare_run(cfg, stage: str, models: tuple[str, ...] = ()) -> Path | None:
    """Check and set up `cfg.train.out` for a run of `stage`; returns the checkpoint to resume from.

    `models`: paths the run reads (its starting model, a PRM...): a folder about to be overwritten
    must not hold them."""
    from posttrain.logging import console
    from posttrain.runtime.support import check_runtime

    check_runtime(cfg, stage)
    out = Path(cfg.train.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        clean_temporary(out)
    ck = None
    if cfg.train.resume:
        ck = latest_checkpoint(out)
        if ck is None:
            found = "the folder does not exist" if not out.exists() else _describe(out) if holds_run(out) else "it holds no run"
            raise UserError(f"--resume: no checkpoint to resume in {out} ({found}); check --out, or start a new run without --resume")
        _check_resume(cfg, out, stage)
        for log in ("metrics.jsonl", "prompt_rewards.jsonl"):  # step-keyed logs: lines after the checkpoint go
            rewind_metrics(out / log, int(ck.name.split("-")[1]))
    elif out.is_dir() and holds_run(out):
        if not cfg.train.overwrite:
            raise UserError(f"{_describe(out)}; continue it with --resume, start afresh with --train.overwrite true, or pick another --out")
        held = [m for m in models if m and _inside(m, out)]
        if held:
            raise UserError(f"--train.overwrite would delete {held[0]}, which this run reads; pick another --out")
        _clear(out)
        console.print(f"{stage}: --train.overwrite: cleared the previous run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG_FILE, f"# posttrain {stage}: the resolved config of this run\n" + dump_yaml(cfg))
    return ck


def _check_resume(cfg, out: Path, stage: str) -> None:
    from posttrain.logging import console, warn

    try:
        saved = saved_config(type(cfg), out)
    except UserError as e:
        raise UserError(f"--resume: cannot read the saved config: {e}") from None
    if saved is None:
        warn(f"--resume: {out} has no {CONFIG_FILE} (a run of an older posttrain); the options cannot be compared")
        return
    changes = config_changes(saved, cfg)
    free = {k: v for k, v in changes.items() if k in FREE_ON_RESUME and k != "train.resume"}
    real = {k: v for k, v in changes.items() if k not in FREE_ON_RESUME}
    for k, (a, b) in free.items():
        console.print(f"{stage}: --resume: {k} {a!r} -> {b!r}")
    if not real:
        return
    listed = "; ".join(f"{k}: {a!r} (saved) -> {b!r}" for k, (a, b) in real.items())
    if cfg.train.resume_changes != "apply":
        raise UserError(f"--resume: options differ from {out / CONFIG_FILE}: {listed}. "
                        "Resume with the saved options (drop these flags), or pass --train.resume_changes apply")
    warn(f"--resume: applying changed options: {listed}")


def rewind_metrics(path: Path, step: int) -> int:
    """Drop the lines of `path` logged after `step` (and a torn last line); returns how many went."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(rec, dict) and rec.get("step", 0) > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return dropped
