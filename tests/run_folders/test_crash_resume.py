"""Crash injection: a kill at every file operation of a checkpoint save (a new step, and a re-save
of the same step) leaves a run that `--resume` continues from, with every step's metrics line
exactly once and the same losses as a straight run."""
import json
import os
import shutil

import pytest
import torch

from posttrain.checkpoint import latest_checkpoint, save_checkpoint
from posttrain.config import load_config
from posttrain.trainers.sft import SFTConfig, SFTTrainer


class Killed(BaseException):
    """Stands for SIGKILL: no handler catches it, nothing after it runs."""


def _cfg(out, max_steps, resume=False):
    return load_config(SFTConfig, None, {
        "model": "tiny-llama:d=32,l=1,h=2", "data": "task:addition", "data.train_rows": 64, "data.eval_rows": 0,
        "sft.sequences_per_step": 4, "optim.schedule": "constant", "train.save_every": 2, "train.progress": "false",
        "max_steps": max_steps, "out": str(out), "resume": str(resume).lower(),
    })


def _losses(out):
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps)), f"duplicated or out-of-order step lines: {steps}"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


OPS = [(os, "rename"), (os, "replace"), (os, "fsync"), (shutil, "rmtree"), (torch, "save")]


def _arm(monkeypatch, kill_at: int | None, active):
    """Count file operations while `active()`; raise Killed at operation number `kill_at`."""
    seen = [0]
    for mod, name in OPS:
        real = getattr(mod, name)

        def wrapped(*a, _real=real, **k):
            if active():
                if seen[0] == kill_at:
                    raise Killed()
                seen[0] += 1
            return _real(*a, **k)

        monkeypatch.setattr(mod, name, wrapped)
    return seen


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    SFTTrainer(_cfg(out, 6)).train()
    return _losses(out)


def _count_ops(tmp_path, monkeypatch, at_step):
    state = {"on": False}
    seen = _arm(monkeypatch, None, lambda: state["on"])
    real_save = SFTTrainer.save

    def save(self):
        state["on"] = self.step == at_step
        try:
            return real_save(self)
        finally:
            state["on"] = False

    monkeypatch.setattr(SFTTrainer, "save", save)
    SFTTrainer(_cfg(tmp_path / "count", 4)).train()
    monkeypatch.undo()
    return seen[0]


def test_kill_at_every_point_of_a_save_then_resume(tmp_path, monkeypatch, straight):
    n_ops = _count_ops(tmp_path, monkeypatch, at_step=4)
    assert n_ops >= 8  # writes, fsyncs, renames: the points a kill can fall between
    for i in range(n_ops):
        out = tmp_path / f"kill{i}"
        state = {"on": False}
        _arm(monkeypatch, i, lambda: state["on"])
        real_save = SFTTrainer.save

        def save(self, real_save=real_save):
            state["on"] = self.step == 4
            try:
                return real_save(self)
            finally:
                state["on"] = False

        monkeypatch.setattr(SFTTrainer, "save", save)
        with pytest.raises(Killed):
            SFTTrainer(_cfg(out, 4)).train()
        monkeypatch.undo()
        ck = latest_checkpoint(out)
        assert ck is not None and ck.name in ("step-0000002", "step-0000004"), (i, ck)
        SFTTrainer(_cfg(out, 6, resume=True)).train()
        losses = _losses(out)
        assert sorted(losses) == [1, 2, 3, 4, 5, 6], (i, sorted(losses))
        assert losses == pytest.approx(straight, abs=1e-6), i
        assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")], i


def test_kill_during_a_resave_of_the_same_step(tmp_path, monkeypatch, straight):
    base = tmp_path / "base"
    trainer = SFTTrainer(_cfg(base, 4))
    trainer.train()
    state = {"on": False}
    seen = _arm(monkeypatch, None, lambda: state["on"])
    state["on"] = True
    save_checkpoint(base, 4, trainer.model, trainer.tokenizer, {"x": 1}, resave=True)
    state["on"] = False
    monkeypatch.undo()
    n_ops = seen[0]
    assert n_ops >= 8
    for i in range(n_ops):
        out = tmp_path / f"resave{i}"
        trainer = SFTTrainer(_cfg(out, 4))
        trainer.train()
        state = {"on": True}
        _arm(monkeypatch, i, lambda: state["on"])
        with pytest.raises(Killed):
            save_checkpoint(out, 4, trainer.model, trainer.tokenizer,
                            {"optimizer": trainer.opt.state_dict(), "scheduler": trainer.sched.state_dict(),
                             "data": trainer.order.state()}, resave=True)
        monkeypatch.undo()
        ck = latest_checkpoint(out)
        assert ck is not None and ck.name == "step-0000004" and (ck / "trainer_state.pt").exists(), (i, ck)
        SFTTrainer(_cfg(out, 6, resume=True)).train()
        losses = _losses(out)
        assert sorted(losses) == [1, 2, 3, 4, 5, 6], (i, sorted(losses))
        assert losses == pytest.approx(straight, abs=1e-6), i
