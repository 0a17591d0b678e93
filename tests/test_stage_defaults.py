"""The configuration a CLI run uses is the stage's documented defaults (as `--help` prints them),
with YAML and then command-line overrides on top; `--help` has a described line per option."""
import ast
import importlib
import subprocess
import sys

import pytest

from posttrain import configs
from posttrain.cli import STAGE_CONFIGS, STAGE_MODULES, main
from posttrain.config import flat_dict

STAGES = ["sft", "rm", "dpo", "rl", "prm"]


def _help_defaults(capsys, stage: str) -> dict:
    assert main([stage, "--help"]) == 0
    out = {}
    for line in capsys.readouterr().out.splitlines()[2:]:
        key, rest = line.split(None, 1)
        if rest.startswith("(--"):
            rest = rest.split(")", 1)[1].strip()
        value, _ = _leading_literal(rest)
        out[key[2:]] = value
    return out


def _leading_literal(text: str):
    """The Python literal at the start of `text` (the default column of a help line)."""
    for end in range(len(text), 0, -1):
        try:
            return ast.literal_eval(text[:end].strip()), text[end:]
        except (ValueError, SyntaxError):
            continue
    raise AssertionError(f"no default in {text!r}")


def _cli_config(monkeypatch, stage: str, args: list[str]):
    mod = importlib.import_module(STAGE_MODULES[stage])
    seen = {}
    monkeypatch.setattr(mod, "run", lambda cfg: seen.setdefault("cfg", cfg))
    assert main([stage, *args]) == 0
    return seen["cfg"]


@pytest.mark.parametrize("stage", STAGES)
def test_cli_config_is_the_documented_defaults(stage, capsys, monkeypatch):
    documented = _help_defaults(capsys, stage)
    cfg = _cli_config(monkeypatch, stage, [])
    assert flat_dict(cfg) == documented


@pytest.mark.parametrize("stage", STAGES)
def test_yaml_then_overrides_on_top_of_the_stage_defaults(stage, tmp_path, monkeypatch):
    p = tmp_path / "run.yaml"
    p.write_text("optim:\n  warmup_steps: 7\n  lr: 3.0e-4\ntrain:\n  seed: 5\n")
    cfg = _cli_config(monkeypatch, stage, ["--config", str(p), "--lr", "2e-4", "--max-steps", "9"])
    default = getattr(configs, STAGE_CONFIGS[stage])()
    assert cfg.optim.warmup_steps == 7 and cfg.train.seed == 5  # from the YAML
    assert cfg.optim.lr == 2e-4 and cfg.train.max_steps == 9  # the command line wins
    assert cfg.optim.schedule == default.optim.schedule and cfg.train.out == default.train.out  # stage defaults stay
    assert cfg.data == default.data


def test_each_stage_keeps_its_own_defaults(monkeypatch):
    rl = _cli_config(monkeypatch, "rl", [])
    assert rl.optim.lr == 1e-5 and rl.optim.schedule == "constant" and rl.data.on_error == "skip"
    for stage in ("dpo", "rm", "prm"):
        assert _cli_config(monkeypatch, stage, []).optim.lr == 1e-4
    outs = [_cli_config(monkeypatch, s, []).train.out for s in STAGES]
    assert outs == ["runs/sft", "runs/rm", "runs/dpo", "runs/rl", "runs/prm"]


def test_eval_and_search_default_to_smollm2_and_their_own_folders(monkeypatch):
    ev = _cli_config(monkeypatch, "eval", [])
    se = _cli_config(monkeypatch, "search", [])
    assert ev.model.name == se.model.name == "smollm2-135m-instruct"
    assert ev.train.out == "runs/eval" and se.train.out == "runs/search"


@pytest.mark.parametrize("stage", [*STAGE_MODULES, "demo"])
def test_help_describes_every_option(stage, capsys):
    assert main([stage, "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert lines
    for line in lines:
        key, rest = line.split(None, 1)
        if rest.startswith("(--"):
            rest = rest.split(")", 1)[1].strip()
        _, doc = _leading_literal(rest)
        assert doc.strip(), f"posttrain {stage} --help: {key} has no description"


def test_help_lists_choices_of_enumerated_options(capsys):
    from posttrain.losses.preference import PREFERENCE_LOSSES, UNPAIRED_LOSSES
    from posttrain.trainers.rl_presets import PRESETS

    assert main(["rl", "--help"]) == 0
    out = {l.split()[0]: l for l in capsys.readouterr().out.splitlines()[2:]}
    assert "|".join(PRESETS) in out["--algo"]
    assert "cosine|constant" in out["--optim.schedule"] and "raise|skip" in out["--data.on_error"]
    assert main(["dpo", "--help"]) == 0
    loss = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("  --loss "))
    import re

    listed = {n for part in re.findall(r"[a-z_]+(?:\|[a-z_]+)+", loss) for n in part.split("|")}
    assert listed == {*PREFERENCE_LOSSES, *UNPAIRED_LOSSES}
    assert configs.RL_ALGOS == tuple(PRESETS)


def test_help_does_not_import_torch():
    code = ("import sys; from posttrain.cli import main; main(['--help']); main(['rl', '--help']); "
            "main(['eval', '--help']); main(['demo', '--help']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("args, key", [
    (["sft", "--lr", "0"], "optim.lr"),
    (["dpo", "--beta", "-0.1"], "beta"),
    (["sft", "--sft.sequences_per_step", "0"], "sft.sequences_per_step"),
    (["rl", "--rl.samples_per_prompt", "0"], "rl.samples_per_prompt"),
    (["sft", "--optim.schedule", "cosin"], "optim.schedule"),
    (["rl", "--algo", "grpoo"], "algo"),
])
def test_out_of_range_or_unknown_values_are_one_line_errors(args, key, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{key}'" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x").exists()
