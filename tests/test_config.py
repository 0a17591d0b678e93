import pytest

from posttrain.config import ConfigError, load_config, parse_overrides
from posttrain.trainers.sft import SFTConfig


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("model: tiny-qwen2\noptim:\n  lr: 3.0e-4\n  warmup_steps: 7\nsft:\n  pack: false\ndata:\n  columns: {question: prompt}\n")
    cfg = load_config(SFTConfig, p, parse_overrides(["--lr", "1e-4", "--max-steps=9", "--resume"]))
    assert cfg.model.name == "tiny-qwen2"
    assert cfg.optim.lr == 1e-4 and cfg.optim.warmup_steps == 7
    assert cfg.train.max_steps == 9 and cfg.train.resume is True
    assert cfg.sft.pack is False and cfg.data.columns == {"question": "prompt"}


def test_typo_names_key_and_closest(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        load_config(SFTConfig, None, {"optim.lrr": "1"})
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"'train.max_stepz \(in .*bad.yaml\)'; did you mean 'train.max_steps'"):
        load_config(SFTConfig, p)


def test_bad_value_type():
    with pytest.raises(ConfigError, match="'optim.lr': expected float"):
        load_config(SFTConfig, None, {"lr": "fast"})
