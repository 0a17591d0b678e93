"""Atomic checkpoints that resume exactly.

A checkpoint folder holds the model in Hugging Face format (or the LoRA adapter), the tokenizer, and
`trainer_state.pt` (optimizer, scheduler, RNG states, data position, step). It is written under a
temporary name and renamed into place, then the `latest` pointer is replaced atomically, so a crash
mid-save never leaves a broken "latest" and never touches the previous checkpoint.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically; `state` is any torch-serialisable dict (optimizer, ...)."""
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    final = ckdir / f"step-{step:07d}"
    tmp = ckdir / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save({**state, "rng": rng_state(), "step": step}, tmp / "trainer_state.pt")
    if final.exists():  # re-saving the same step: move the old one aside first
        shutil.rmtree(final)
    os.rename(tmp, final)
    _write_text_atomic(ckdir / "latest", final.name)
    _prune(ckdir, keep, final.name)
    return final


def _prune(ckdir: Path, keep: int, latest: str) -> None:
    done = sorted(p for p in ckdir.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for p in done[:-keep] if keep > 0 else []:
        if p.name != latest:
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckdir = Path(run_dir) / "checkpoints"
    ptr = ckdir / "latest"
    if not ptr.exists():
        return None
    path = ckdir / ptr.read_text().strip()
    return path if (path / "trainer_state.pt").exists() else None


def load_state(path: Path) -> dict:
    return torch.load(Path(path) / "trainer_state.pt", weights_only=False)


def restore_checkpoint(run_dir: Path, model, optimizer, scheduler) -> dict | None:
    """Load the latest checkpoint of `run_dir` into the live model, optimizer and scheduler, and set
    the RNG states. Returns the saved state (``step``, ``data`` and any trainer extras), or None
    (with a warning) when there is nothing to resume."""
    from posttrain.logging import console, warn
    from posttrain.trainers.weights import load_weights_into

    ck = latest_checkpoint(run_dir)
    if ck is None:
        warn(f"--resume: no checkpoint in {run_dir}; starting from scratch")
        return None
    load_weights_into(model, ck)
    state = load_state(ck)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    console.print(f"resumed from {ck} at step {state['step']}")
    return state
