"""The config sections and stage configs of the training stages, importable without torch.

`posttrain STAGE --help` reads these classes, so this module imports nothing heavy: a field's
trailing ``# comment`` is its help line, a ``Literal`` lists its choices and ``ranged`` its bounds
(both checked by `posttrain.config.build`). Each stage config sets its own section defaults through
``default_factory`` (``posttrain rl`` trains at lr 1e-5, constant; ``dpo`` at 1e-4); those are the
defaults a CLI or YAML run starts from. The trainer modules re-export their classes from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.config import ranged

RL_ALGOS = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "remax", "ppo", "online_dpo")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny-llama"  # tiny-llama[:d=,l=,h=] | tiny-qwen2 | smollm2-135m-instruct | a model, LoRA adapter or run folder | owner/name (hub, online only)
    trust_remote_code: bool = False  # run a local model's own modelling code (only for folders you trust)
    lora_rank: int = ranged(0, ge=0)  # LoRA rank; 0 = full fine-tuning
    lora_alpha: int = ranged(16, gt=0)  # LoRA scaling numerator (scale = alpha / rank)
    lora_dropout: float = ranged(0.0, ge=0, le=1)  # dropout on the LoRA input
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # module name suffixes that get an adapter
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, slower)


@dataclass(frozen=True)
class DataConfig:
    path: str = "task:addition"  # a file/folder, or task:NAME[:k=v,...] for a built-in task
    eval_path: str = ""  # held-out file; empty: the task's held-out split (tasks) or none
    kind: str = ""  # row format; empty: detect from the columns (language_modeling, prompt_only, prompt_completion, preference, unpaired_preference, stepwise, verifiable)
    columns: dict[str, str] = field(default_factory=dict)  # rename source columns: question=prompt,answer=answer
    on_error: Literal["raise", "skip"] = "raise"  # a bad row stops the run, or is skipped and counted
    max_length: int = ranged(512, gt=0)  # tokens per example (prompt + completion); longer ones are truncated
    train_rows: int = ranged(20000, gt=0)  # rows generated for a task / read at most from a file
    eval_rows: int = ranged(200, ge=0)  # held-out rows generated / read at most


@dataclass(frozen=True)
class OptimConfig:
    lr: float = ranged(1e-3, gt=0)  # peak learning rate (AdamW)
    weight_decay: float = ranged(0.0, ge=0)  # AdamW decoupled weight decay
    beta1: float = ranged(0.9, ge=0, le=1)  # AdamW first-moment decay
    beta2: float = ranged(0.999, ge=0, le=1)  # AdamW second-moment decay
    warmup_steps: int = ranged(0, ge=0)  # linear warm-up from lr/warmup_steps to lr
    schedule: Literal["cosine", "constant"] = "cosine"  # learning rate after warm-up
    min_lr_ratio: float = ranged(0.1, ge=0, le=1)  # cosine: final lr as a fraction of lr
    max_grad_norm: float = ranged(1.0, gt=0)  # clip the global gradient norm to this


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/run"  # run folder: metrics.jsonl, config.yaml, checkpoints/
    max_steps: int = ranged(100, gt=0)  # optimizer steps of the whole run (a resumed run continues to it)
    seed: int = 0  # seeds the model init (tiny models), data order and sampling
    resume: bool = False  # continue from the run folder's latest checkpoint (its config.yaml is the base)
    overwrite: bool = False  # start afresh in a run folder that already holds a run (deletes its checkpoints and metrics)
    resume_changes: Literal["refuse", "apply"] = "refuse"  # on --resume, options that differ from the saved config.yaml: refuse, or apply them (and say so)
    eval_every: int = ranged(0, ge=0)  # steps between evaluations; 0: only at the end
    save_every: int = ranged(0, ge=0)  # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = ranged(2, ge=1)  # newest checkpoints kept in checkpoints/
    log_every: int = ranged(1, gt=0)  # steps between metrics.jsonl lines
    loggers: tuple[str, ...] = ("jsonl",)  # jsonl plus any of tensorboard, wandb, mlflow
    progress: bool = True  # a progress bar on a terminal; plain progress lines on stdout when it is a log or a pipe
    progress_every_s: float = ranged(30.0, ge=0)  # plain progress lines: at most one per this many seconds, on log_every steps (plus the first, last and eval steps; 0: every log_every steps)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a stage runs (`posttrain.runtime.device.init_runtime` reads it). Under
    ``torchrun`` the rank and world size come from the launcher's environment, not from here."""

    device: str = "auto"  # auto|cpu|cuda|cuda:N; auto: CUDA when present (cuda:LOCAL_RANK under torchrun), else cpu
    dtype: Literal["fp32", "bf16"] = "fp32"  # bf16: bf16 matmuls (autocast) with fp32 master weights, optimizer state and logits
    parallel: Literal["none", "ddp", "fsdp2"] = "none"  # data parallel across torchrun ranks: none|ddp|fsdp2 (training stages)
    timeout_s: float = ranged(300.0, gt=0)  # a collective (all-reduce, barrier) waiting longer than this fails the run, naming the rank


@dataclass(frozen=True)
class SFTOptions:
    sequences_per_step: int = ranged(64, gt=0)  # examples per optimizer step
    sequences_per_microbatch: int = ranged(64, gt=0)  # examples per forward/backward (gradient accumulation)
    pack: bool = True  # pack examples into rows without padding (same loss as unpacked)
    tokens_per_row: int = ranged(0, ge=0)  # packing row length; 0 = the longest example (attention cost stays near unpacked)
    eval_max_new_tokens: int = ranged(32, gt=0)  # generated tokens per held-out problem
    target_accuracy: float = ranged(0.0, ge=0, le=1)  # > 0: stop once a periodic eval reaches this held-out accuracy


@dataclass(frozen=True)
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out="runs/sft"))
    sft: SFTOptions = field(default_factory=SFTOptions)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass(frozen=True)
class PreferenceOptions:
    loss_args: dict[str, str] = field(default_factory=dict)  # loss hyper-parameters: gamma=0.5,label_smoothing=0.1
    pairs_per_step: int = ranged(32, gt=0)  # preference pairs per optimizer step
    pairs_per_microbatch: int = ranged(32, gt=0)  # pairs per forward/backward (gradient accumulation)
    reference: Literal["cached", "live"] = "cached"  # reference logprobs computed once and saved, or every step
    reference_pairs_per_batch: int = ranged(64, gt=0)  # pairs per reference forward when caching
    eval_before: bool = True  # evaluate once before training (before/after in the result)
    eval_max_new_tokens: int = ranged(32, gt=0)  # generated tokens per held-out problem (task data)
    falling_logps_window: int = ranged(20, gt=0)  # steps; warn when chosen and rejected logps both fall over it
    # task data only: draw this many samples per train problem from the starting model and use a wrong
    # one as the rejected side (self-generated pairs, Pang et al. 2024); 0 keeps the task's synthetic slips
    self_generated: int = ranged(0, ge=0)
    self_generated_temperature: float = ranged(1.0, gt=0)  # sampling temperature of the self-generated solutions
    # Step-DPO (Lai et al. 2024): keep only each pair's first differing step (shared steps join the prompt)
    step_pairs: bool = False
    step_sep: str = "\n"  # step separator for step_pairs


@dataclass(frozen=True)
class PreferenceConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, schedule="constant"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out="runs/dpo"))
    pref: PreferenceOptions = field(default_factory=PreferenceOptions)
    loss: str = "dpo"  # a loss or a weighted mix such as dpo:0.8,bco_pair:0.2,sft:1; losses: aot|aot_pair|apo_down|apo_zero|bco_pair|dpo|dpop|exo_pair|hinge|ipo|nca_pair|orpo|robust|rpo|sft|simpo|sppo_hard; unpaired: apo_zero_unpaired|bco|kto
    beta: float = ranged(0.1, ge=0)  # strength of the reference constraint (DPO's beta)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass(frozen=True)
class RewardOptions:
    pairs_per_step: int = ranged(32, gt=0)  # preference pairs per optimizer step
    pairs_per_microbatch: int = ranged(32, gt=0)  # pairs per forward/backward (gradient accumulation)
    margin_column: str = ""  # a per-pair numeric column used as the Llama 2 margin; empty = no margin
    center_coef: float = ranged(0.0, ge=0)  # reward-centering coefficient (TRL's center_rewards_coefficient)
    eval_pairs_per_batch: int = ranged(64, gt=0)  # held-out pairs per scoring forward


@dataclass(frozen=True)
class RewardConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out="runs/rm"))
    rm: RewardOptions = field(default_factory=RewardOptions)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass(frozen=True)
class PRMOptions:
    step_sep: str = "\n"  # separator between solution steps; the PRM scores the token before each
    sequences_per_step: int = ranged(32, gt=0)  # solutions per optimizer step
    sequences_per_microbatch: int = ranged(32, gt=0)  # solutions per forward/backward
    labels: Literal["soft", "hard"] = "soft"  # soft: BCE on the label in [0, 1]; hard: a label > 0 becomes 1
    neutral_label: float = ranged(1.0, ge=0, le=1)  # PRM800K rating 0
    eval_share: float = ranged(0.1, ge=0, le=0.9)  # rows held out for step accuracy
    # Math-Shepherd automatic labels (task data)
    policy: str = ""  # the completer that rolls out from each step prefix (a folder); empty: model.name
    solution_policy: str = ""  # the generator whose solutions are labelled; empty: the completer
    label_problems: int = ranged(256, gt=0)  # task problems whose solutions are labelled
    solutions_per_problem: int = ranged(4, gt=0)  # sampled solutions labelled per problem
    rollouts_per_step: int = ranged(8, gt=0)  # completions rolled out from each step prefix
    label_temperature: float = ranged(1.0, gt=0)  # sampling temperature of solutions and rollouts
    label_max_new_tokens: int = ranged(64, gt=0)  # tokens per solution / rollout
    # ProcessBench at the end (a split file such as processbench/gsm8k.json); empty: skipped
    processbench: str = ""
    processbench_limit: int = ranged(0, ge=0)  # first N ProcessBench problems (0: all)
    threshold: float = ranged(0.5, ge=0, le=1)  # a step scoring below this is the first error
    # the head also reads each step's log-likelihood under the backbone (`ProcessRewardModel.step_likelihood`)
    likelihood_features: bool = False
    freeze_backbone: bool = False  # train the head only (a probe of the backbone's features)


@dataclass(frozen=True)
class PRMConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(path="task:addition:scratchpad=1", train_rows=1000))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out="runs/prm"))
    prm: PRMOptions = field(default_factory=PRMOptions)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass(frozen=True)
class RLOptions:
    prompts_per_step: int = ranged(16, gt=0)  # prompts sampled per RL step
    samples_per_prompt: int = ranged(8, gt=0)  # completions per prompt (the GRPO group size)
    sequences_per_microbatch: int = ranged(64, gt=0)  # sequences per forward/backward
    minibatches_per_rollout: int = ranged(1, gt=0)  # optimizer steps per pass over a rollout batch
    epochs_per_rollout: int = ranged(1, gt=0)  # passes over a rollout batch (stored old logprobs)
    max_new_tokens: int = ranged(64, gt=0)  # tokens per completion
    temperature: float = ranged(1.0, gt=0)  # rollout sampling temperature
    top_p: float = ranged(1.0, gt=0, le=1)  # rollout nucleus sampling
    stop: tuple[str, ...] = ()  # stop strings that end a completion
    engine: Literal["hf", "vllm"] = "hf"  # rollout engine
    rollout_sequences_per_batch: int = ranged(256, gt=0)  # sequences decoded together by the engine
    lean_decoder: bool = True  # hf engine: models.fast.LeanDecoder for plain Llama/Qwen2/Mistral models
    share_prompts: bool = True  # policy / reference passes run each group's prompt once (same values; off under data parallelism)
    seed_per_prompt: bool = False  # each prompt samples from its own seeded stream: rollouts independent of batching and of the rank count
    # asynchronous rollouts (posttrain.rollout.ray_pool workers generate ahead of the trainer) and the off-policy correction
    max_staleness: int = ranged(0, ge=0)  # 0: synchronous; K: rollouts for the next K steps are generated while the trainer updates (--rollout.backend ray)
    correction: Literal["auto", "none", "bypass", "decoupled"] = "auto"  # behaviour-policy correction; auto: decoupled when max_staleness > 0, else none
    is_cap: float = ranged(2.0, gt=0)  # decoupled: importance weights pi_old / pi_behaviour above this are truncated to it (or masked)
    is_mode: Literal["truncate", "mask"] = "truncate"  # decoupled: truncate weights above is_cap, or drop those tokens from the loss
    max_refill_rounds: int = ranged(3, ge=0)  # extra sampling rounds per step while gates refuse groups (dynamic sampling, reward_band)
    # online curriculum (posttrain.trainers.curriculum): which prompts are sampled, which groups are admitted
    sampler: Literal["uniform", "pass_rate"] = "uniform"  # uniform passes, or prefer prompts with pass rate near 1/2 (weight p(1-p) + floor)
    curriculum_ema: float = ranged(0.5, gt=0, le=1)  # pass_rate sampler: weight of a prompt's newest group mean in its pass rate
    curriculum_prior: float = ranged(0.5, ge=0, le=1)  # pass_rate sampler: pass rate assumed for a prompt not yet sampled
    curriculum_floor: float = ranged(0.02, gt=0)  # pass_rate sampler: weight added to every prompt (solved / unsolved ones are revisited)
    min_reward_spread: float = ranged(0.0, ge=0)  # dynamic sampling admits a group whose reward max - min exceeds this (0: DAPO's not-all-equal)
    reward_band: tuple[float, ...] = ()  # lo,hi: admit only groups whose mean reward lies in [lo, hi] (empty: no band gate)
    reward: str = ""  # comma list of task, math, format, countdown, exact; empty: the task's verifier / math
    reward_weights: dict[str, float] = field(default_factory=dict)  # weight per reward name: task=1,format=0.2
    reward_timeout_s: float = ranged(60.0, gt=0)  # a reward call slower than this scores 0 and is counted
    show_every: int = ranged(10, ge=0)  # print example completions every N steps (0: never)
    eval_max_new_tokens: int = ranged(0, ge=0)  # 0: max_new_tokens
    min_entropy: float = ranged(0.01, ge=0)  # warn below (entropy collapse)
    max_kl: float = ranged(1.0, ge=0)  # warn above (KL blow-up)
    # process reward model as a dense reward (see the module docstring); empty prm_model: off
    prm_model: str = ""  # a PRM folder written by `posttrain prm`
    prm_coef: float = 1.0  # weight of the PRM term beside the outcome reward / advantage
    prm_step_sep: str = ""  # empty: the separator the PRM was trained with
    prm_baseline: float = 0.5  # subtracted from step scores in token-level rewards (gae, reinforce_pp)
    # multi-turn environments (posttrain.envs, posttrain.rollout.multiturn); empty env: single-turn prompts
    env: str = ""  # an environment, NAME[:k=v,...] (guess, calculator, wordle, frozenlake, blackjack, ...); rows are its seeds unless data.path is a file
    max_turns: int = ranged(4, gt=0)  # model turns per episode (each at most max_new_tokens)
    max_episode_tokens: int = ranged(256, gt=0)  # tokens after the prompt per episode, model and env tokens together
    max_tool_output_tokens: int = ranged(64, gt=0)  # tokens of one env / tool message (cut beyond, counted)
    env_timeout_s: float = ranged(10.0, ge=0)  # an env call (reset, step, tool, reward) slower than this fails the episode (0: no limit)
    env_role: str = "user"  # chat role of env messages ("tool" where the chat template has one)
    # algorithm axes: None = the --algo preset's value (posttrain.trainers.rl_presets)
    estimator: str | None = None  # advantage estimator: grpo|dr_grpo|rloo|remax|reinforce_pp|reinforce_pp_baseline|gae
    loss: str | None = None  # policy objective: ppo|gspo|cispo|reinforce|dpo
    reducer: str | None = None  # loss aggregation: token-mean|seq-mean-token-mean|seq-mean-token-sum|seq-sum-norm
    kl_placement: Literal["loss", "reward", "none"] | None = None  # where the KL to the reference enters
    kl_estimator: str | None = None  # k1|k2|k3
    kl_coef: float | None = ranged(None, ge=0)  # KL coefficient
    clip_low: float | None = ranged(None, ge=0)  # PPO ratio clip below 1
    clip_high: float | None = ranged(None, ge=0)  # PPO ratio clip above 1 (DAPO clip-higher)
    dual_clip: float | None = None  # dual-clip bound for negative advantages (> 1; unset: off)
    entropy_coef: float | None = None  # entropy bonus coefficient
    dynamic_sampling: bool | None = None  # DAPO: resample groups whose rewards are all equal
    overlong_buffer: int | None = None  # DAPO soft overlong penalty length (-1: a quarter of max_new_tokens)
    mask_truncated: bool | None = None  # drop truncated completions from the loss
    gamma: float | None = None  # GAE / return discount
    lam: float | None = None  # GAE lambda
    vf_coef: float | None = None  # value loss coefficient (ppo)
    dpo_beta: float | None = None  # online_dpo: DPO beta


@dataclass(frozen=True)
class RolloutConfig:
    """Where RL rollouts run (`posttrain.rollout.ray_pool`): in the trainer's process, or on Ray actors."""

    backend: Literal["local", "ray"] = "local"  # local: the engine in the trainer's process; ray: rollout workers (Ray actors)
    workers: int = ranged(2, gt=0)  # ray: rollout workers; a step's prompts are dealt out over them
    cpus_per_worker: float = ranged(1.0, ge=0)  # ray: CPUs reserved per worker (its torch threads follow, at least 1)
    gpus_per_worker: float = ranged(0.0, ge=0)  # ray: GPUs per worker (its engine then runs on cuda)
    timeout_s: float = ranged(300.0, gt=0)  # ray: a generate or weight update slower than this fails, naming the worker
    max_restarts: int = ranged(0, ge=0)  # ray: dead workers replaced (with the current weights) before the run fails
    transport: Literal["auto", "object_store", "shared_memory", "adapter", "collective"] = "auto"  # ray: weight sync; auto = adapter (LoRA tensors only) for a LoRA policy, else object_store; shared_memory: workers on the trainer's node; collective: broadcast over a gloo (CPU) / nccl (GPU) group


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # ray: a cluster to join (ray start --head prints it); empty: start a local one


@dataclass(frozen=True)
class RLConfig:
    algo: Literal[RL_ALGOS] = "grpo"  # algorithm preset (`--algo`); rl.* axes override its parts
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(on_error="skip", train_rows=2000))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, schedule="constant"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out="runs/rl", max_steps=50))
    rl: RLOptions = field(default_factory=RLOptions)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"  # the demo's folder: a run folder per stage, report.md, summary.json, plots
    task: str = "addition:scratchpad=2"  # 3-digit addition, one column per line with the running result, then "#### sum"
    model: str = "tiny-llama:d=128,l=4,h=4"  # the from-scratch model (any --model of the training stages)
    seed: int = 0  # seeds every stage
    sft_steps: int = 1000  # the schedule's length; SFT stops early at sft_target_accuracy
    sft_target_accuracy: float = ranged(0.95, ge=0, le=1)  # stop SFT once held-out accuracy reaches this
    sft_eval_every: int = ranged(50, gt=0)  # SFT steps between held-out evaluations
    sft_lr: float = ranged(3e-3, gt=0)  # SFT peak learning rate
    sequences_per_step: int = ranged(64, gt=0)  # SFT examples per step
    eval_problems: int = ranged(200, gt=0)  # held-out problems for greedy exact match
    stages: tuple[str, ...] = ("sft", "dpo", "rl", "scaling")  # stages to run, in order: sft,dpo,rl,scaling (and agent)
    # DPO and GRPO start from a mid-accuracy SFT snapshot, each beside continued SFT from it for the same wall time
    mid_accuracy: float = ranged(0.45, ge=0, le=1)  # the SFT step closest to this held-out accuracy is where dpo and rl start
    snapshot_every: int = ranged(5, gt=0)  # SFT steps between candidate snapshots (kept after the last eval below a target)
    dpo_steps: int = ranged(40, gt=0)  # preference (RPO) steps
    dpo_problems: int = 640  # problems whose right solution is paired with the model's own wrong sample
    dpo_lr: float = ranged(3e-4, gt=0)  # preference stage learning rate (constant)
    rl_steps: int = ranged(40, gt=0)  # GRPO steps (20 gained 1.5 points from a 23% start, 40 gained 21.5: BENCHMARKS.md, The demo)
    rl_lr: float = ranged(3e-4, gt=0)  # GRPO learning rate (constant after the warm-up)
    rl_warmup_steps: int = 5  # linear warm-up: Adam's first steps move every weight by the full lr
    # test-time scaling (stage "scaling"): weak SFT checkpoint + PRM from the final SFT model
    scaling_weak_accuracy: float = 0.3  # the SFT step closest to this held-out accuracy is the policy searched
    scaling_label_problems: int = ranged(160, gt=0)  # problems whose weak-model solutions are labelled for the PRM
    scaling_solutions: int = 4  # weak-model solutions labelled per problem
    scaling_rollouts: int = 2  # final-model rollouts per step prefix
    scaling_prm_steps: int = ranged(120, gt=0)  # PRM training steps
    scaling_prm_lr: float = ranged(1e-2, gt=0)  # PRM learning rate
    scaling_problems: int = ranged(100, gt=0)  # held-out problems searched
    scaling_k: tuple[int, ...] = (1, 4, 16)  # sample budgets k of maj@k and PRM best-of-k
    scaling_beams: tuple[str, ...] = ("4x4",)  # NUM_BEAMSxEXPANSIONS
    scaling_temperature: float = ranged(0.5, gt=0)  # sampling temperature of the searched policy
    scaling_beam_max_steps: int = 8  # a solution is 4 lines
    # the agent stage (opt-in: --stages sft,dpo,rl,scaling,agent): its own tiny model, SFT on the scripted player's won games, then GRPO
    agent_env: str = "guess:high=7,max_guesses=3"  # the environment (posttrain.envs)
    agent_model: str = "tiny-llama:d=64,l=2,h=4"  # the agent's from-scratch model
    agent_sft_steps: int = ranged(150, gt=0)  # SFT steps on the transcripts
    agent_grpo_steps: int = ranged(50, gt=0)  # GRPO steps in the environment
    agent_lr: float = ranged(5e-4, gt=0)  # GRPO learning rate
    agent_prompts: int = ranged(32, gt=0)  # env seeds per GRPO step (8 games each)
    overwrite: bool = False  # replace a demo run already in --out (its stage folders, report and summary)
    progress: bool = True  # show progress bars on a terminal
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass(frozen=True)
class EvalData:
    path: str = ""  # explicit benchmark file; empty: the benchmark's default file under `root`
    root: str = ""  # data root; empty: $POSTTRAIN_DATA, else ../shared/data from the CWD
    limit: int = ranged(0, ge=0)  # first N problems (0: all; generated tasks: 200)
    on_error: Literal["raise", "skip"] = "raise"  # a row without a gold answer stops the run, or is skipped and counted
    columns: dict[str, str] = field(default_factory=dict)  # source column -> field (prompt, answer), e.g. question=prompt,solution=answer
    checker: str = ""  # answer checker, math|exact|numeric|task:SPEC; empty: the benchmark's own (math for your own file)
    template: str = ""  # prompt template for your own file, with a {prompt} placeholder; empty: the prompt as is
    max_prompt_tokens: int = ranged(4096, ge=0)  # longest prompt in tokens, capped at the model's max positions (0: that cap only)
    on_long: Literal["skip", "truncate"] = "skip"  # a longer prompt, skip|truncate (keep its end); counted in the results



@dataclass(frozen=True)
class EvalSampling:
    n: int = ranged(4, ge=0)  # sampled completions per problem (0: greedy only)
    ks: tuple[int, ...] = (1, 4)  # k values for pass@k / maj@k / mean@k (those > n are dropped)
    greedy: bool = True  # also decode one greedy completion per problem (the greedy column)
    temperature: float = ranged(0.7, gt=0)  # sampling temperature of the n samples
    top_p: float = ranged(1.0, gt=0, le=1)  # nucleus sampling
    max_new_tokens: int = ranged(512, gt=0)  # tokens per completion
    seed: int = 0  # seeds the samples (per problem, so a resumed run draws the same)
    problems_per_batch: int = ranged(8, gt=0)  # problems decoded together (and written to samples.jsonl together)
    sequences_per_batch: int = ranged(32, gt=0)  # sequences per engine batch



@dataclass(frozen=True)
class EvalRun:  # named `train` in EvalConfig so that --out / --resume mean the same on every stage
    out: str = "runs/eval"  # results folder: samples.jsonl, results.json, results.md
    resume: bool = True  # continue a stopped evaluation in --out (its settings must match)
    progress: bool = True  # show a progress bar on a terminal
    check_overlap: bool = True  # warn when the benchmark shares 13-grams with the training data of the run --model comes from (recorded in results.json)



@dataclass(frozen=True)
class EvalEpisode:  # --env: the episode limits (as rl.max_turns, ...; posttrain.eval.env)
    max_turns: int = ranged(4, gt=0)  # model turns per episode (each at most sampling.max_new_tokens)
    max_episode_tokens: int = ranged(256, gt=0)  # tokens after the prompt per episode, model and env tokens together
    max_tool_output_tokens: int = ranged(64, gt=0)  # tokens of one env / tool message (cut beyond, counted)
    env_timeout_s: float = ranged(10.0, ge=0)  # an env call slower than this fails the episode (0: no limit)
    env_role: str = "user"  # chat role of env messages ("tool" where the chat template has one)
    success_reward: float = 1.0  # an episode with at least this reward is a success


@dataclass(frozen=True)
class EvalConfig:
    benchmark: str = ""  # gsm8k, math500, aime24, ..., task:SPEC, or file (your own --data.path); empty: file if data.columns/checker/template is set, else gsm8k
    env: str = ""  # a multi-turn environment NAME[:k=v,...] (guess, calculator, wordle, frozenlake, ...) instead of a benchmark: success rate, turns, tokens
    episode: EvalEpisode = field(default_factory=EvalEpisode)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="smollm2-135m-instruct"))
    data: EvalData = field(default_factory=EvalData)
    sampling: EvalSampling = field(default_factory=EvalSampling)
    train: EvalRun = field(default_factory=EvalRun)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)



@dataclass(frozen=True)
class SearchOptions:
    n: int = ranged(8, gt=0)  # samples for best_of_n / votes
    num_beams: int = ranged(4, gt=0)  # beams kept by prm_beam_search
    expansions_per_beam: int = ranged(4, gt=0)  # next steps sampled per beam
    max_steps: int = ranged(16, gt=0)  # steps at most per solution (beam search, MCTS)
    temperature: float = ranged(1.0, gt=0)  # sampling temperature
    top_p: float = ranged(1.0, gt=0, le=1)  # nucleus sampling
    max_new_tokens: int = ranged(512, gt=0)  # tokens per whole solution
    max_step_tokens: int = ranged(256, gt=0)  # tokens per step (stepwise methods)
    step_sep: str = "\n"  # separator between solution steps
    step_agg: Literal["min", "last", "prod", "mean"] = "min"  # a solution's PRM score from its step scores
    seed: int = 0  # seeds the sampling



@dataclass(frozen=True)
class SearchConfig:
    method: tuple[str, ...] = ("greedy", "majority_vote")  # comma list of greedy|best_of_n|budget_forcing|compute_optimal|majority_vote|mcts|prm_beam_search|weighted_vote
    benchmark: str = "gsm8k"  # gsm8k, math500, aime24, ..., task:SPEC, or file (your own --data.path)
    prm: str = ""  # a PRM folder from `posttrain prm` (needed by best_of_n, weighted_vote, prm_beam_search, mcts)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="smollm2-135m-instruct"))
    data: EvalData = field(default_factory=lambda: EvalData(limit=50))
    search: SearchOptions = field(default_factory=SearchOptions)
    train: EvalRun = field(default_factory=lambda: EvalRun(out="runs/search"))
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


from posttrain.datatools.config import DataToolsConfig  # noqa: E402,F401  (the `data` stage, for --help)
