"""Configuration of `posttrain rl`: the run's options (`RLOptions`, `rl.*` on the command line) and
`algorithm_of`, which resolves ``--algo`` plus any axis set in the options into an `Algorithm`.

Batch sizes say their unit; ``None`` on an algorithm axis means the preset's value (`rl_presets`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.rl_presets import Algorithm, resolve_algorithm


@dataclass(frozen=True)
class RLOptions:
    prompts_per_step: int = 16
    samples_per_prompt: int = 8
    sequences_per_microbatch: int = 64
    minibatches_per_rollout: int = 1  # optimizer steps per pass over a rollout batch
    epochs_per_rollout: int = 1  # passes over a rollout batch (stored old logprobs)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    engine: str = "hf"  # hf | vllm
    rollout_sequences_per_batch: int = 256
    lean_decoder: bool = True  # hf engine: models.fast.LeanDecoder for plain Llama/Qwen2/Mistral models
    share_prompts: bool = True  # policy / reference passes run each group's prompt once (same values)
    max_refill_rounds: int = 3  # dynamic sampling: extra sampling rounds per step
    reward: str = ""  # comma list of task, math, format, countdown, exact; empty: the task's verifier / math
    reward_weights: dict[str, float] = field(default_factory=dict)
    reward_timeout_s: float = 60.0
    show_every: int = 10  # print example completions every N steps (0: never)
    eval_max_new_tokens: int = 0  # 0: max_new_tokens
    min_entropy: float = 0.01  # warn below (entropy collapse)
    max_kl: float = 1.0  # warn above (KL blow-up)
    # process reward model as a dense reward (see the module docstring); empty prm_model: off
    prm_model: str = ""  # a PRM folder written by `posttrain prm`
    prm_coef: float = 1.0  # weight of the PRM term beside the outcome reward / advantage
    prm_step_sep: str = ""  # empty: the separator the PRM was trained with
    prm_baseline: float = 0.5  # subtracted from step scores in token-level rewards (gae, reinforce_pp)
    # axes: None = the preset's value (see rl_presets)
    estimator: str | None = None
    loss: str | None = None
    reducer: str | None = None
    kl_placement: str | None = None
    kl_estimator: str | None = None
    kl_coef: float | None = None
    clip_low: float | None = None
    clip_high: float | None = None
    dual_clip: float | None = None
    entropy_coef: float | None = None
    dynamic_sampling: bool | None = None
    overlong_buffer: int | None = None
    mask_truncated: bool | None = None
    gamma: float | None = None
    lam: float | None = None
    vf_coef: float | None = None
    dpo_beta: float | None = None


@dataclass(frozen=True)
class RLConfig:
    algo: str = "grpo"  # grpo | dr_grpo | dapo | rloo | reinforce_pp | remax | ppo | online_dpo (`--algo`)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(on_error="skip", train_rows=2000))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, schedule="constant"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out="runs/rl", max_steps=50))
    rl: RLOptions = field(default_factory=RLOptions)


def algorithm_of(algo: str, opts: RLOptions) -> Algorithm:
    """The --algo preset with the axes set in `opts` (non-None) on top."""
    axes = {f.name for f in dataclasses.fields(Algorithm)}
    overrides = {k: v for k, v in dataclasses.asdict(opts).items() if k in axes}
    return resolve_algorithm(algo, overrides, opts.max_new_tokens)
