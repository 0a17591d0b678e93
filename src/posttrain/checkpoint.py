"""Atomic checkpoints that resume exactly.

A checkpoint folder holds the model in Hugging Face format (or the LoRA adapter), the tokenizer, and
`trainer_state.pt` (optimizer, scheduler, RNG states, data position, step). A save writes everything
under a temporary name, fsyncs every file and the folder, and only then renames it into place and
replaces the `latest` pointer (itself written to a temporary file, fsynced and renamed). So a kill at
any point leaves either the previous checkpoint or the new one as `latest`, never a torn one:

- re-saving a step that already exists moves the old folder aside (``.old-step-N``) before the new
  one is renamed in, and deletes it afterwards; a kill between the two renames is repaired on the
  next read (`latest_checkpoint` puts the aside folder back);
- a `latest` that names a missing folder falls back to the newest complete ``step-*`` folder;
- temporary folders of killed saves are removed by the next save or resume (`clean_temporary`).
Saving the step that is already the latest checkpoint is skipped unless ``resave=True`` (a run
whose `max_steps` is a multiple of `save_every` used to write its last step twice).
`load_weights_into` puts a checkpoint's weights (full or LoRA adapter) back into a live module; it
lives here, below the trainers (`trainers.weights` re-exports it).

Data-parallel runs (`posttrain.runtime`): rank 0 alone writes the folder (the trainer gathers what
it needs first: an FSDP2 model's full state dict as ``model_state``, the optimizer state, and every
rank's RNG state as ``rng_per_rank``); every rank reads it on resume. `restore_checkpoint` can be
split in two for a trainer that must load weights before wrapping its model and the optimizer after
(`load_checkpoint_weights`, then `restore_checkpoint(..., weights=False, ...)`). The RNG states
include CUDA's when CUDA is initialised (`posttrain.runtime.device.rng_state`).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from posttrain.runtime.device import rng_state, set_rng_state  # noqa: F401  (re-exported)

_STEP = re.compile(r"step-(\d{7})$")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (before it is renamed into place)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(Path(dirpath) / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old or the new content, never a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def torch_save_atomic(obj, path: Path) -> None:
    """`torch.save` through a temporary file, fsynced and renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def clean_temporary(run_dir: Path) -> list[str]:
    """Remove what killed saves left behind (temporary checkpoint folders and files); returns their names."""
    ckdir = Path(run_dir) / "checkpoints"
    gone = []
    for root in (Path(run_dir), ckdir):
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if p.name.startswith((".tmp-step-", ".old-step-")) or (p.name.startswith(".") and ".tmp-" in p.name):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                gone.append(p.name)
    return gone


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in `run_dir`, ascending."""
    ckdir = Path(run_dir) / "checkpoints"
    if not ckdir.is_dir():
        return []
    steps = [int(m.group(1)) for p in ckdir.iterdir() if (m := _STEP.match(p.name)) and (p / "trainer_state.pt").exists()]
    return sorted(steps)


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2, resave: bool = False,
                    model_state: dict | None = None, move_in: dict[str, Path] | None = None) -> Path:
    """Write checkpoint `step` atomically; `state` is any torch-serialisable dict (optimizer, ...).
    `model_state`: the full state dict to save in `model`'s place (an FSDP2 model's, gathered by
    `posttrain.runtime.parallel.full_model_state`; plain models only, not LoRA). `move_in`: folders
    written beside it by every rank (sharded optimizer state), moved in under their names before the
    checkpoint becomes visible."""
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    final = ckdir / f"step-{step:07d}"
    current = latest_checkpoint(run_dir)  # also repairs an interrupted re-save
    if current == final and not resave:
        return final
    clean_temporary(run_dir)
    tmp = ckdir / f".tmp-step-{step:07d}-{os.getpid()}"
    from posttrain.models.lora import save_model  # lazy: keeps `import posttrain.checkpoint` light

    if model_state is not None:
        model.save_pretrained(tmp, state_dict=model_state)
    else:
        save_model(model, tmp, run_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for name, folder in (move_in or {}).items():
        os.rename(folder, tmp / name)
    torch.save({**state, "rng": rng_state(), "step": step}, tmp / "trainer_state.pt")
    fsync_tree(tmp)
    aside = ckdir / f".old-step-{step:07d}"
    if final.exists():  # re-saving the same step: move the old one aside first, delete it last
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
    os.rename(tmp, final)
    fsync_dir(ckdir)
    write_text_atomic(ckdir / "latest", final.name)
    shutil.rmtree(aside, ignore_errors=True)
    _prune(ckdir, keep, final.name)
    return final


def _prune(ckdir: Path, keep: int, latest: str) -> None:
    done = sorted(p for p in ckdir.iterdir() if p.is_dir() and _STEP.match(p.name))
    for p in done[:-keep] if keep > 0 else []:
        if p.name != latest:
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names; an interrupted re-save is put back, and a pointer to a missing
    folder falls back to the newest complete one. None when the run has no complete checkpoint."""
    ckdir = Path(run_dir) / "checkpoints"
    ptr = ckdir / "latest"
    if ptr.exists():
        name = ptr.read_text().strip()
        path, aside = ckdir / name, ckdir / f".old-{name}"
        if not (path / "trainer_state.pt").exists() and (aside / "trainer_state.pt").exists():
            shutil.rmtree(path, ignore_errors=True)
            os.rename(aside, path)  # killed between moving the old folder aside and renaming the new one in
        if (path / "trainer_state.pt").exists():
            return path
    steps = checkpoint_steps(run_dir)
    return ckdir / f"step-{steps[-1]:07d}" if steps else None


def load_weights_into(model, folder: Path) -> None:
    """Load the weights saved in `folder` (a LoRA adapter, or full safetensors shards) into `model` in place."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        return
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
    if missing or unexpected:
        raise RuntimeError(f"{folder}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_state(path: Path) -> dict:
    return torch.load(Path(path) / "trainer_state.pt", weights_only=False)


def set_peak_lr(optimizer, scheduler, lr: float) -> None:
    """Give a restored `LambdaLR` schedule the peak lr `lr`, and the optimizer its current value."""
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    factors = [fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    for group, f in zip(optimizer.param_groups, factors):
        group["initial_lr"], group["lr"] = lr, lr * f
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def _latest_or_error(run_dir: Path) -> Path:
    from posttrain.errors import UserError

    ck = latest_checkpoint(run_dir)
    if ck is None:
        raise UserError(f"--resume: no checkpoint in {run_dir}")
    return ck


def load_checkpoint_weights(run_dir: Path, model) -> Path:
    """Load the latest checkpoint's weights into `model` (before it is wrapped or sharded); returns
    the checkpoint folder."""
    ck = _latest_or_error(run_dir)
    load_weights_into(model, ck)
    return ck


def restore_checkpoint(run_dir: Path, model, optimizer, scheduler, lr: float | None = None, *, weights: bool = True,
                       load_optimizer=None, rank: int = 0, world_size: int = 1, verbose: bool = True) -> dict | None:
    """Load the latest checkpoint of `run_dir` into the live model, optimizer and scheduler, and set
    the RNG states. `lr` (the run's configured peak lr) replaces the checkpoint's, so a changed lr
    that `prepare_run` applied takes effect at once. Returns the saved state (``step``, ``data`` and any trainer extras). No checkpoint
    is a `UserError` (`posttrain.runs.prepare_run` has said so before any model was loaded).

    Data parallel: ``weights=False`` when `load_checkpoint_weights` already ran; `load_optimizer`
    (``fn(state_dict, format, checkpoint folder)``, `PolicyWorker.load_optimizer`) loads a sharded optimizer; `rank` / `world_size` pick this rank's
    saved RNG state (``rng_per_rank``; rank 0's when the world size changed)."""
    from posttrain.logging import console, warn

    ck = _latest_or_error(run_dir)
    if weights:
        load_weights_into(model, ck)
    state = load_state(ck)
    if load_optimizer is not None:
        load_optimizer(state["optimizer"], state.get("optimizer_format", "index"), ck)
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if lr is not None:
        set_peak_lr(optimizer, scheduler, lr)
    per_rank = state.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == world_size:
        set_rng_state(per_rank[rank])
    else:
        if per_rank is not None and rank == 0:
            warn(f"--resume: the checkpoint was written by {len(per_rank)} ranks, this run has {world_size}: every rank takes rank 0's RNG state")
        set_rng_state(state["rng"])
    if verbose:
        console.print(f"resumed from {ck} at step {state['step']}")
    return state
