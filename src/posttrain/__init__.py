"""posttrain: post-train language models for reasoning and alignment, from Python or the CLI.

The Python API has the shape TRL users know: a config, a trainer, ``train()``::

    import posttrain

    cfg = posttrain.SFTConfig(model=posttrain.ModelConfig(name="tiny-llama:d=32,l=2,h=2"))
    trainer = posttrain.SFTTrainer(cfg, train_data=[{"prompt": "1+1=", "completion": "2"}])
    trainer.train()  # -> runs/sft: metrics.jsonl, config.yaml, checkpoints/step-NNNNNNN/

Every name below is imported on first use (PEP 562), so ``import posttrain`` and ``posttrain --help``
stay fast and do not import torch:

- trainers and their configs: `SFTTrainer` / `SFTConfig`, `PreferenceTrainer` / `PreferenceConfig`
  (the DPO family, KTO, BCO; `DPOTrainer` / `DPOConfig` are aliases), `RewardTrainer` /
  `RewardConfig`, `PRMTrainer` / `PRMConfig`, `RLTrainer` / `RLConfig` (`RL_ALGOS` lists its presets);
- the component configs: `ModelConfig`, `DataConfig`, `OptimConfig`, `TrainConfig` and each stage's
  options (`SFTOptions`, `PreferenceOptions`, `RewardOptions`, `PRMOptions`, `RLOptions`,
  `EvalConfig`, `SearchConfig`, ...); `load_config` reads a YAML file with overrides;
- models: `load_model_and_tokenizer` (a name: ``tiny-llama``, a folder, a run folder, a hub id);
- evaluation: `evaluate`, `load_benchmark`, `pass_at_k`, `maj_at_k`;
- test-time search: `run_search`, `best_of_n`, `majority_vote`, `weighted_vote`, `prm_beam_search`,
  `mcts`, `budget_forcing`, `compute_optimal`, `SEARCH_METHODS`;
- data: `load_examples`, `read_rows`, `detect_kind`, `DataError`, and the `posttrain data` tools
  (`run_data_tool` with a `DataToolsConfig`, `find_duplicates`, `ngram_overlap`, `limr_scores`);
- rewards: `combine_rewards`, `math_reward`, `RewardError`.
"""
from __future__ import annotations

import importlib

__all__ = ["__version__"]  # extended below with every lazily exported name


def _version() -> str:
    """The installed distribution's version; a source checkout without metadata reads pyproject.toml."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("posttrain")
    except PackageNotFoundError:
        pass
    import re
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
    except OSError:
        m = None
    return m.group(1) if m else "0+unknown"


__version__ = _version()

# public name -> (module, attribute in that module)
_EXPORTS: dict[str, tuple[str, str]] = {}


def _export(module: str, *names: str, **renamed: str) -> None:
    for n in names:
        _EXPORTS[n] = (module, n)
    for public, attr in renamed.items():
        _EXPORTS[public] = (module, attr)


# configs: torch-free
_export("posttrain.configs", "ModelConfig", "DataConfig", "OptimConfig", "TrainConfig", "SFTOptions", "SFTConfig",
        "PreferenceOptions", "PreferenceConfig", "RewardOptions", "RewardConfig", "PRMOptions", "PRMConfig",
        "RLOptions", "RLConfig", "RL_ALGOS", "EvalConfig", "EvalData", "EvalSampling", "EvalRun", "SearchOptions",
        "SearchConfig", "DemoConfig", DPOConfig="PreferenceConfig")
_export("posttrain.datatools.config", "DataToolsConfig")
_export("posttrain.config", "load_config", "ConfigError", "dump_yaml")
_export("posttrain.errors", "UserError")
# trainers
_export("posttrain.trainers.sft", "SFTTrainer")
_export("posttrain.trainers.preference", "PreferenceTrainer", DPOTrainer="PreferenceTrainer")
_export("posttrain.trainers.reward", "RewardTrainer")
_export("posttrain.trainers.prm", "PRMTrainer")
_export("posttrain.trainers.rl", "RLTrainer")
# models
_export("posttrain.models", "load_model_and_tokenizer")
# evaluation
_export("posttrain.eval.harness", "evaluate")
_export("posttrain.eval", "load_benchmark", "pass_at_k", "maj_at_k", "BENCHMARKS")
# test-time search
_export("posttrain.search", "SEARCH_METHODS", "best_of_n", "majority_vote", "weighted_vote", "prm_beam_search", "mcts",
        "budget_forcing", "compute_optimal")
_export("posttrain.search.cli", "run_search")
# data and the `posttrain data` tools
_export("posttrain.data", "load_examples", "read_rows", "detect_kind", "DataError", "Example")
_export("posttrain.datatools.stage", run_data_tool="run")
_export("posttrain.datatools.dedup", "find_duplicates")
_export("posttrain.datatools.decontam", ngram_overlap="overlap")
_export("posttrain.datatools.select", "limr_scores")
# rewards
_export("posttrain.rewards", "combine_rewards", "math_reward", "RewardError")

__all__ += sorted(_EXPORTS)


def __getattr__(name: str):
    """Import a public name's module on first use (PEP 562) and cache the value in this module."""
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'posttrain' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
