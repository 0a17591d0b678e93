"""Run folders through the front door: a used folder is refused, --resume needs a checkpoint and
resumes the saved config, changed options are refused or applied and said, a run whose max_steps is
a multiple of save_every saves once, Ctrl-C saves, and DPO resumes past its cached references."""
import json

import pytest
import torch
import yaml

import posttrain.trainers.sft as sft_mod
from posttrain.checkpoint import checkpoint_steps, load_state
from posttrain.cli import main

TINY = ["--model", "tiny-llama:d=32,l=1,h=2", "--data.train_rows", "64", "--data.eval_rows", "0",
        "--sft.sequences_per_step", "4", "--train.progress", "false"]


def _sft(out, *extra):
    return main(["sft", *TINY, "--out", str(out), *extra])


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    return err[-1]


def _steps(out):
    return [json.loads(l)["step"] for l in open(out / "metrics.jsonl") if '"loss"' in l]


def test_a_used_folder_is_refused_then_overwritten_only_when_asked(tmp_path, capsys):
    out = tmp_path / "run"
    assert _sft(out, "--max-steps", "2") == 0
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert _sft(out, "--max-steps", "3") == 2
    line = _err_line(capsys)
    assert str(out) in line and "already holds a run" in line and "--train.overwrite" in line
    assert (out / "metrics.jsonl").read_text() == before and checkpoint_steps(out) == [2]  # nothing lost
    assert _sft(out, "--max-steps", "3", "--train.overwrite", "true") == 0
    assert checkpoint_steps(out) == [3] and _steps(out) == [1, 2, 3]


def test_overwrite_never_deletes_the_model_it_starts_from(tmp_path, capsys):
    out = tmp_path / "run"
    assert _sft(out, "--max-steps", "1") == 0
    capsys.readouterr()
    rc = main(["sft", *TINY[2:], "--model", str(out / "checkpoints" / "step-0000001"), "--out", str(out),
               "--max-steps", "1", "--train.overwrite", "true"])
    assert rc == 2 and "which this run reads" in _err_line(capsys)
    assert checkpoint_steps(out) == [1]


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    assert _sft(tmp_path / "typo", "--resume") == 2
    line = _err_line(capsys)
    assert "--resume: no checkpoint" in line and "typo" in line
    assert not (tmp_path / "typo" / "metrics.jsonl").exists()


def test_resume_uses_the_saved_config_and_refuses_or_applies_changes(tmp_path, capsys):
    out = tmp_path / "run"
    assert _sft(out, "--max-steps", "2", "--lr", "1e-3", "--optim.schedule", "constant", "--sft.sequences_per_step", "2") == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["sft"]["sequences_per_step"] == 2 and saved["optim"]["lr"] == 1e-3
    capsys.readouterr()
    # only --out and --resume: the saved options (not the stage defaults) continue, a longer run is fine
    assert main(["sft", "--out", str(out), "--resume", "--max-steps", "3", "--train.progress", "false"]) == 0
    assert _steps(out) == [1, 2, 3]
    assert "train.max_steps 2 -> 3" in capsys.readouterr().err
    # a changed lr is refused, naming the key and both values
    assert main(["sft", "--out", str(out), "--resume", "--max-steps", "4", "--lr", "1e-4"]) == 2
    line = _err_line(capsys)
    assert "optim.lr: 0.001 (saved) -> 0.0001" in line and "--train.resume_changes apply" in line
    assert _steps(out) == [1, 2, 3]
    # applied when asked: the new lr is the one used from the first resumed step on
    assert main(["sft", "--out", str(out), "--resume", "--max-steps", "4", "--lr", "1e-4",
                 "--train.resume_changes", "apply", "--train.progress", "false"]) == 0
    rows = [json.loads(l) for l in open(out / "metrics.jsonl") if '"loss"' in l]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["lr"] == pytest.approx(1e-3) and rows[3]["lr"] == pytest.approx(1e-4)
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 1e-4


def test_a_changed_data_set_is_refused_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert _sft(out, "--max-steps", "1") == 0
    capsys.readouterr()
    assert main(["sft", "--out", str(out), "--resume", "--data", "task:addition:digits=2", "--max-steps", "2"]) == 2
    assert "data.path: 'task:addition' (saved) -> 'task:addition:digits=2'" in _err_line(capsys)


def test_last_step_saved_once_when_max_steps_is_a_multiple_of_save_every(tmp_path, monkeypatch):
    saves = []
    real = torch.save

    def counting(obj, f, *a, **k):
        if str(f).endswith("trainer_state.pt"):
            saves.append(obj["step"])
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", counting)
    assert _sft(tmp_path / "run", "--max-steps", "4", "--train.save_every", "2") == 0
    assert saves == [2, 4]


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = sft_mod.SFTTrainer.train_step

    def interrupted(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(sft_mod.SFTTrainer, "train_step", interrupted)
    assert _sft(out, "--max-steps", "5") == 130
    assert checkpoint_steps(out) == [2] and load_state(out / "checkpoints" / "step-0000002")["step"] == 2
    assert "continue with --resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["sft", "--out", str(out), "--resume", "--train.progress", "false"]) == 0
    assert _steps(out) == [1, 2, 3, 4, 5]


def test_dpo_resumed_with_more_steps_extends_its_reference_cache(tmp_path):
    out = tmp_path / "dpo"
    args = ["dpo", "--model", "tiny-llama:d=32,l=1,h=2", "--data", "task:addition:digits=2", "--data.train_rows", "64",
            "--data.eval_rows", "0", "--pref.pairs_per_step", "4", "--pref.eval_before", "false",
            "--train.progress", "false", "--out", str(out)]
    assert main([*args, "--max-steps", "2"]) == 0
    cache = torch.load(out / "reference_logps.pt", weights_only=False)
    assert int((~torch.isnan(cache["train"][:, 0])).sum()) == 8  # the 2 x 4 items the run planned to visit
    assert main(["dpo", "--out", str(out), "--resume", "--max-steps", "12", "--train.progress", "false"]) == 0
    cache = torch.load(out / "reference_logps.pt", weights_only=False)
    assert int((~torch.isnan(cache["train"][:, 0])).sum()) == 48
    rows = [json.loads(l) for l in open(out / "metrics.jsonl") if '"loss"' in l]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(r["loss"] == r["loss"] and r["grad_norm"] == r["grad_norm"] for r in rows)  # no NaN
