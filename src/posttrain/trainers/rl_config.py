"""Configuration of `posttrain rl`: the run's options (`RLOptions`, `rl.*` on the command line) and
`algorithm_of`, which resolves ``--algo`` plus any axis set in the options into an `Algorithm`.

Batch sizes say their unit; ``None`` on an algorithm axis means the preset's value (`rl_presets`).
"""
from __future__ import annotations

import dataclasses

from posttrain.trainers.rl_presets import Algorithm, resolve_algorithm
from posttrain.configs import RLConfig, RLOptions  # noqa: F401  (re-exported)


def algorithm_of(algo: str, opts: RLOptions) -> Algorithm:
    """The --algo preset with the axes set in `opts` (non-None) on top."""
    axes = {f.name for f in dataclasses.fields(Algorithm)}
    overrides = {k: v for k, v in dataclasses.asdict(opts).items() if k in axes}
    return resolve_algorithm(algo, overrides, opts.max_new_tokens)
