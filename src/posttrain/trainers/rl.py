"""Online RL with verifiable rewards: the PPO / GRPO family and online DPO, one `step()`.

    rollout -> score -> reference (old / ref logprobs, values) -> advantages -> update -> sync weights

Papers: PPO (Schulman et al. 2017), GRPO (Shao et al. 2024, "DeepSeekMath"), Dr. GRPO (Liu et al.
2025), DAPO (Yu et al. 2025), RLOO (Ahmadian et al. 2024), REINFORCE++ (Hu 2025), ReMax (Li et al.
2023), online DPO (Guo et al. 2024). Each `--algo` is a preset over independent axes
(`rl_presets`); the objective pieces live in `advantages`, `losses.policy`, `losses.value`,
`losses.preference` and `ops`, so this file only composes them. What each piece needs (a greedy
baseline rollout, per-token rewards, a reference model, whole groups) is declared where it is
registered (`advantages.EstimatorNeeds`, `rl_update.UpdateKind`); this file asks, it never tests names.

Units: a step samples `prompts_per_step` prompts x `samples_per_prompt` completions; the batch is
cut into `minibatches_per_rollout` optimizer steps, repeated `epochs_per_rollout` times, each
accumulated over micro-batches of `sequences_per_microbatch` sequences. Every micro-batch loss is
normalized by its mini-batch's token / sequence counts, so the update does not depend on the
micro-batch split.

Departures / choices:
- The old-policy logprobs are recomputed by the trainer (not taken from the engine); with a single
  optimizer step per rollout and no KL-in-reward they are the detached logprobs of the update's own
  forward pass (identical values, one forward pass saved). The engine/trainer mismatch is logged.
- Dynamic sampling (DAPO) drops zero-variance groups and samples new prompts, at most
  `max_refill_rounds` extra rounds; a step with fewer groups trains on what it has and says so.
- KL in the reward: per-token -beta*kl for token-level estimators (REINFORCE++, GAE), else the
  sequence reward minus beta * sum_t kl_t.
- With ``mask_truncated``, a truncated completion is not a sequence of the update: the per-sequence
  reducers divide by the number of sequences with a trained token (as verl's ``agg_loss``); counting
  the masked rows used to shrink every update by the share kept.
- Environments (``rl.env``, `posttrain.envs`): a group is ``samples_per_prompt`` multi-turn episodes on
  one env row (seed); the environment owns the reward; env / tool tokens sit in the sequence with
  mask 0 (attended, never trained, no advantage, no KL); per-turn rewards reach turn-level estimators
  (``turn_discounted``) as a per-token stream. See `posttrain.rollout.multiturn`. A two-player env
  (``tictactoe``) is played by the policy in both seats (`posttrain.rollout.selfplay`): each seed gives
  one group per seat (`posttrain.envs.training`), so a step has 2 x ``prompts_per_step`` groups.
- ``whiten_advantages`` (PPO) whitens over the trained tokens; set on a sequence-level estimator, it
  now whitens that advantage spread over its tokens (it used to be ignored silently).
- Speed only, same values (tested): rollouts go through the lean Llama-family decoder
  (`rl.lean_decoder`), and the policy / old / reference passes run each group's prompt once
  (`rl.share_prompts`, shared-prefix forward; `rl_batch.completion_logits`). The options live in
  `rl_config`.

Data parallel (``torchrun ... --runtime.parallel ddp|fsdp2``; `posttrain.runtime`): every rank draws
the same prompt indices and generates and scores every N-th prompt of a round with its own engine (a
plain copy of the policy under FSDP2, refreshed after each update); the groups are shared, so every
rank holds the same kept groups (dynamic sampling included) and trains its contiguous share of them.
Advantages are computed on the gathered global batch (`rl_update.global_step_advantages`: whitening,
REINFORCE++ statistics and KL shaping see every rank's sequences); the loss's token and sequence
counts are all-reduced. With one mini-batch per rollout this is the single-process update exactly
(tested to 1e-5, with ``rl.seed_per_prompt`` for identical rollouts); with more, each rank shuffles its
own share. Not data-parallel yet: ``rl.env``, ``rl.engine vllm``, online DPO.

Rollout workers and asynchronous RL (``--rollout.backend ray``, `posttrain.rollout.ray_pool`): the
engine is a pool of Ray actors. ``rl.max_staleness`` K > 0 keeps the first sampling round of the next
K steps generating on them while this step updates, so a batch is at most K policy versions old (the
version each completion carries is logged as ``offpolicy/staleness``). The loss knows the behaviour
policy through ``rl.correction``: ``bypass`` (the sampler's logprobs are the old policy) or
``decoupled`` (Hilton et al. 2022; AReaL, Fu et al. 2025: the old policy recomputed, each token's loss
weighted by min(pi_old / pi_behaviour, ``is_cap``), or masked beyond it), the default when K > 0; with
one optimizer step per rollout pi_old is the policy the loss pass runs, so its detached logprobs give
the weights and no separate old-policy pass runs (verl and AReaL recompute it). As in
verl's rollout correction, the truncation bounds the variance that stale samples add; unlike AReaL,
staleness is bounded by submission (at most K steps ahead), not by discarding finished samples. A
checkpoint waits for the rollouts generated ahead and keeps them (token ids, logprobs, versions), so
an asynchronous run resumes on the samples it would have trained on (regenerating them on the loaded
weights would be a valid continuation, but not the same run). Each role's idle
time is logged: ``time/wait_rollout_s`` for the trainer, ``time/worker_idle_s`` for the workers.

PRM as a dense reward (``--rl.prm_model runs/prm``, a folder written by `posttrain prm`): the PRM
scores each step of each completion (cut from the engine's token ids at ``rl.prm_step_sep``, by
default the PRM's own separator) at the step's last token. Sequence-level estimators (grpo, dr_grpo,
rloo, remax) add ``prm_coef *`` `advantages.process_advantages` (DeepSeekMath Sec. 4.1.3: step scores
normalized over the group, summed over the steps ending at or after each token) to the outcome
advantage; the paper uses the process term alone. Token-level estimators (gae / ppo, reinforce_pp*)
get ``prm_coef * (score - prm_baseline)`` in the token-level reward (Math-Shepherd step-by-step PPO,
which uses the raw score; baseline 0.5 keeps the policy from being paid per step written). A failing
PRM call is counted (``prm/errors``) and warned about; that batch trains on the outcome reward alone.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter, deque
from pathlib import Path

import torch

from posttrain.config import ConfigError
from posttrain.advantages import estimator_needs, zero_std_group_fraction
from posttrain.checkpoint import load_state, restore_checkpoint, save_checkpoint
from posttrain.data import encode_prompt
from posttrain.logging import MetricsLogger, ProgressBar, console, warn
from posttrain.models import load_model_and_tokenizer
from posttrain.rewards import make_overlong_penalty
from posttrain.rollout import Completion, HFEngine, PolicyWeights, SamplingParams
from posttrain.runtime.device import fail_point, rng_state
from posttrain.runtime.worker import PolicyWorker
from posttrain.trainers.common import (
    NullLogger, bind_inputs, check_global_batch, sharded_dir, default_verifier, exact_match_eval, load_split, read_split,
    saved_on_interrupt, seed_everything, start_run,
)
from posttrain.trainers.curriculum import admit, make_sampler
from posttrain.trainers.rl_batch import (
    RolloutBatch, ValueModel, batched_no_grad, build_reward_fns, collate_completions, is_empty_prompt,
    load_prm_scorer, policy_forward, policy_mask, prm_step_scores, prompt_text, score, token_reward_stream,
)
from posttrain.trainers.rl_config import RLConfig, RLOptions, algorithm_of  # noqa: F401 (RLOptions re-exported)
from posttrain.trainers.rl_update import (
    UpdateSpec, global_step_advantages, health_warnings, merge_stats, mismatch_stats, off_policy_weights, update_value,
)


class RLTrainer:
    """Online RL on prompts (see the module docstring): ``--algo`` grpo, dr_grpo, dapo, rloo,
    reinforce_pp, remax, ppo or online_dpo, one `step()` per rollout batch.

    `cfg` holds every option (`RLConfig`; the CLI builds the same object from YAML and flags).
    `model`: a name or folder (``"tiny-llama:d=32,l=2,h=2"``, ``"runs/sft"``, a Hugging Face folder),
    or a causal LM module given with its `tokenizer`; None loads ``cfg.model.name``. It is trained in
    place.
    `reward_fns`: ``[(fn, weight), ...]`` replacing ``rl.reward``; each `fn` is called by keyword as
    TRL calls its reward functions (``prompts=``, ``completions=``, ``completion_ids=``, ``answer=``
    and the other dataset columns; see `posttrain.rewards.base`), with TRL's message lists for
    conversational prompts of your data (text for built-in ``task:NAME`` prompts).
    `train_data` / `eval_data`: a path (or ``task:NAME``), a list of dicts or a ``datasets.Dataset`` of
    prompt rows (``prompt`` as text or a message list, and usually an ``answer``); they replace
    ``cfg.data.path`` / ``cfg.data.eval_path`` (see `posttrain.trainers.common.bind_inputs`). A bad row
    raises `DataError` naming it (``train_data[3]: field 'prompt': ...``) before any model loads.
    Held-out rows with an ``answer`` are scored by greedy exact match. The run folder is
    ``cfg.train.out``.
    """

    def __init__(self, cfg: RLConfig, model=None, tokenizer=None, reward_fns=None, *, train_data=None, eval_data=None):
        cfg, model, self._train_src, eval_src = bind_inputs(cfg, model, train_data, eval_data)
        self.cfg, c = cfg, cfg.rl
        self.alg = algorithm_of(cfg.algo, c)
        self.kind = self.alg.update  # what the update needs from the step (rl_update.UpdateKind)
        self.needs = estimator_needs(self.alg.estimator) if self.kind.advantages else None  # and the estimator
        if c.minibatches_per_rollout < 1 or c.epochs_per_rollout < 1 or c.samples_per_prompt < 1:
            raise ConfigError("minibatches_per_rollout, epochs_per_rollout and samples_per_prompt must be >= 1")
        if c.samples_per_prompt < self.kind.min_samples_per_prompt:
            raise ConfigError(f"--algo {cfg.algo} (rl.loss {self.alg.loss}) needs samples_per_prompt >= "
                              f"{self.kind.min_samples_per_prompt} ({self.kind.why})")
        self.rt, self.resume_from = start_run(cfg, "rl", (cfg.model.name, c.prm_model))
        rt = self.rt
        check_global_batch(rt, "rl.prompts_per_step", c.prompts_per_step)
        if rt.distributed:
            why = ("rl.env (multi-turn episodes)" if c.env else "rl.engine vllm" if c.engine != "hf"
                   else f"--algo {cfg.algo} (whole-group updates)" if self.kind.whole_groups else None)
            if why:
                raise ConfigError(f"runtime.parallel={rt.parallel}: {why} does not run data-parallel yet; run it as one process")
        seed_everything(cfg.train.seed)
        self.env = self._build_env() if c.env else None
        self._raw_rows = self._read_rows()  # the data first: a bad row is reported before any model is loaded
        if model is None:
            model, tokenizer = load_model_and_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code, seed=cfg.train.seed)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._load_data(reward_fns, eval_src)
        self.run_dir = Path(cfg.train.out)
        critic = ValueModel(model) if self.alg.value_model else None  # a copy of the starting backbone, before sharding
        total_updates = cfg.train.max_steps * c.minibatches_per_rollout * c.epochs_per_rollout
        # LoRA, placement, optimizer, the reference (under LoRA: the adapter disabled, no copy)
        self.worker = PolicyWorker(model, rt, cfg.model, cfg.optim, total_updates, reference=self.alg.needs_reference,
                                   engine=True, resume_dir=self.run_dir if cfg.train.resume else None)
        self.model, self.opt, self.sched = self.worker.model, self.worker.opt, self.worker.sched
        self.critic_worker = None
        if critic is not None:
            if cfg.train.resume:
                critic.load_state_dict(load_state(self.resume_from)["critic"])
            self.critic_worker = PolicyWorker(critic, rt, None, cfg.optim, total_updates)
        self.critic = self.critic_worker.model if self.critic_worker else None
        self.generator = self.worker.engine_model()  # the module rollouts and evaluation run (a plain copy under fsdp2)
        self._ahead_steps = c.max_staleness  # asynchronous rollouts: steps generated ahead of the trainer
        self._ahead: deque = deque()  # (step, prompt indices, this rank's positions, pending generation)
        self._waited = 0.0  # seconds the trainer waited for rollouts this step
        self.correction = ("decoupled" if c.max_staleness else "none") if c.correction == "auto" else c.correction
        if c.max_staleness and (cfg.rollout.backend != "ray" or c.env or self.kind.whole_groups):
            raise ConfigError("rl.max_staleness > 0 needs rollout workers that generate while the trainer updates: "
                              "--rollout.backend ray (single-turn prompts, a policy-gradient --algo)")
        if self.correction != "none" and not self.kind.advantages:
            raise ConfigError(f"rl.correction {self.correction}: needs a policy-gradient --algo (not {cfg.algo})")
        self.engine = self._build_engine()
        if c.prm_model and (not self.kind.dense_rewards or c.prm_coef < 0):
            raise ConfigError("rl.prm_model needs a policy-gradient --algo (not online_dpo) and rl.prm_coef >= 0")
        self.prm_scorer, self.prm_sep = (None, "") if not c.prm_model else load_prm_scorer(
            c.prm_model, c.prm_step_sep, c.sequences_per_microbatch, cfg.data.max_length)
        self.step_num = 0
        self.counts: Counter = Counter()  # cumulative bad-case counts
        self._warned: Counter = Counter()
        self.history: list[dict] = []
        if cfg.train.resume:
            self._resume()
        self.logger = (MetricsLogger(self.run_dir, cfg.train.loggers, dataclasses.asdict(cfg), resume=cfg.train.resume)
                       if rt.is_main else NullLogger())
        self._prompt_log = open(self.run_dir / "prompt_rewards.jsonl", "a") if rt.is_main else None  # per-prompt reward history (LIMR)

    def _log_prompt(self, i: int, rewards: torch.Tensor, admitted: bool) -> None:
        """One line per sampled group: the data for LIMR's learning-impact score (`posttrain data select`)."""
        if not self.rt.is_main:
            return
        ex = self.rows[i]
        if self._prompt_log.closed:  # collecting after train() finished
            self._prompt_log = open(self.run_dir / "prompt_rewards.jsonl", "a")
        self._prompt_log.write(json.dumps({"step": self.step_num + 1, "prompt_id": i, "where": getattr(ex, "where", ""),
                                           "reward_mean": float(rewards.mean()), "admitted": admitted}) + "\n")
        self._prompt_log.flush()

    # ------------------------------------------------------------------ set-up
    def _load_data(self, reward_fns, eval_src=None) -> None:
        cfg, c = self.cfg, self.cfg.rl
        rows, self.task, self.load_counts = self._raw_rows
        if self.env is not None:
            return self._load_env_data(rows)
        max_prompt = cfg.data.max_length - c.max_new_tokens
        self.rows, self.prompt_ids = [], []
        for ex in rows:
            ids = [] if is_empty_prompt(ex) else encode_prompt(self.tokenizer, ex.prompt)
            if not ids:
                self.load_counts["empty_prompt"] += 1
            elif len(ids) > max_prompt:
                self.load_counts["prompt_too_long"] += 1
            else:
                self.rows.append(ex)
                self.prompt_ids.append(ids)
        if self.load_counts:
            warn(f"rl data: skipped {dict(self.load_counts)} of {len(rows)} rows (empty prompts / longer than data.max_length - max_new_tokens = {max_prompt})")
        if not self.rows:
            raise ConfigError(f"rl data '{cfg.data.path}': no usable prompts ({dict(self.load_counts)})")
        self.reward_fns = list(reward_fns) if reward_fns else build_reward_fns(c.reward, c.reward_weights, self.task)
        if self.alg.overlong_buffer > 0:
            self.reward_fns.append((make_overlong_penalty(c.max_new_tokens, self.alg.overlong_buffer), self.alg.overlong_penalty))
        self.eval_rows = load_split(cfg.data, "eval", source=eval_src)[0] if cfg.data.eval_rows > 0 else []
        self.verify = default_verifier(self.task)
        self.sampler = make_sampler(c.sampler, len(self.rows), cfg.train.seed, c.curriculum_ema, c.curriculum_prior,
                                    c.curriculum_floor)
        if c.reward_band and not (len(c.reward_band) == 2 and c.reward_band[0] <= c.reward_band[1]):
            raise ConfigError(f"rl.reward_band: expected lo,hi with lo <= hi, got {','.join(map(str, c.reward_band))}")

    def _build_env(self):
        """The run's environment (``rl.env``; `posttrain.envs.training.env_rollouts_for`)."""
        from posttrain.envs.training import env_rollouts_for

        if self.needs is not None and self.needs.baseline_rollout or self.cfg.rl.prm_model or self.kind.whole_groups:
            raise ConfigError("rl.env: ReMax baselines, PRM rewards and online_dpo are not supported with environments yet")
        return env_rollouts_for(self.cfg, self._train_src)

    def _load_env_data(self, rows) -> None:
        """Env rows: prompts come from ``reset`` at rollout time, the env owns the reward."""
        cfg, c = self.cfg, self.cfg.rl
        self.rows, self.prompt_ids = list(rows), [[] for _ in rows]
        if not self.rows:
            raise ConfigError(f"rl.env '{c.env}': no rows")
        fmt = self.env.bind(self.tokenizer)
        if not fmt.append_only:
            warn(f"rl.env: the chat template is not append-only ({fmt.reason}); every turn is its own training sample")
        self.reward_fns, self.eval_rows, self.verify = [], [], default_verifier(None)
        self.sampler = make_sampler(c.sampler, len(self.rows), cfg.train.seed, c.curriculum_ema, c.curriculum_prior,
                                    c.curriculum_floor)

    def _read_rows(self):
        """(examples, task, counts of rows skipped at load by reason) for the rl split."""
        if self.env is not None:
            return self.env.examples(), None, Counter()
        rows, task, report = read_split(self.cfg.data, "rl", source=self._train_src)
        if report is None:  # task data
            return rows, task, Counter()
        console.print(f"rl data: {report.summary()}")
        counts = Counter({("empty_prompt" if "empty" in reason else f"bad_row: {reason}"): k for reason, k in report.skipped.items()})
        return rows, task, counts

    def _build_engine(self):
        c, r = self.cfg.rl, self.cfg.rollout
        if r.backend == "ray":  # rollout workers: Ray actors, each with its own engine (posttrain.rollout.ray_pool)
            if self.rt.distributed:
                raise ConfigError("--rollout.backend ray with runtime.parallel: not supported yet (each rank has its own engine)")
            from posttrain.rollout.ray_pool import RayRolloutPool

            return RayRolloutPool(self.generator, self.tokenizer, r.workers, sequences_per_batch=c.rollout_sequences_per_batch,
                                  lean=c.lean_decoder, cpus_per_worker=r.cpus_per_worker, gpus_per_worker=r.gpus_per_worker,
                                  timeout_s=r.timeout_s, max_restarts=r.max_restarts, address=self.cfg.ray.address,
                                  transport=r.transport, engine=c.engine, seed=self.cfg.train.seed)
        if r.backend != "local":
            raise ConfigError(f"rollout.backend must be 'local' or 'ray', got '{r.backend}'")
        if c.engine == "hf":
            return HFEngine(self.generator, self.tokenizer, sequences_per_batch=c.rollout_sequences_per_batch, lean=c.lean_decoder)
        if c.engine == "vllm":
            from posttrain.rollout.vllm import VLLMEngine, import_vllm, save_for_vllm

            import_vllm()
            folder = save_for_vllm(self.model, self.tokenizer, Path(self.cfg.train.out) / "vllm-init")
            engine = VLLMEngine(str(folder), seed=self.cfg.train.seed)
            engine.update_weights(PolicyWeights(self.model), 0)
            return engine
        raise ConfigError(f"rl.engine must be 'hf' or 'vllm', got '{c.engine}'")

    def describe(self) -> dict:
        """The run's derived sizes: the algorithm's resolved axes, prompts, sequences per step and
        mini-batch, optimizer steps per rollout, parameters, rewards, reference / value model, PRM."""
        c = self.cfg.rl
        n = c.prompts_per_step * c.samples_per_prompt * (self.env.groups_per_row if self.env is not None else 1)
        return {
            "algorithm": dataclasses.asdict(self.alg), "prompts": len(self.rows), "eval_prompts": len(self.eval_rows),
            "sequences_per_step": n, "sequences_per_minibatch": -(-n // c.minibatches_per_rollout),
            "optimizer_steps_per_rollout": c.minibatches_per_rollout * c.epochs_per_rollout,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "rewards": [getattr(f, "__name__", str(f)) + f" x{w}" for f, w in self.reward_fns],
            "reference_model": self.worker.has_reference, "value_model": self.critic is not None,
            "ranks": self.rt.world_size, "parallel": self.rt.parallel,
            "prm": {"model": c.prm_model, "coef": c.prm_coef, "step_sep": self.prm_sep, "baseline": c.prm_baseline,
                    "use": "token_rewards" if self.needs.token_rewards else "process_advantages"}
            if self.prm_scorer is not None else None,
        }

    # ------------------------------------------------------------------ the step
    def step(self) -> dict:
        """One rollout batch: rollout -> score -> reference -> advantages -> update -> sync.

        Returns the step's metrics (``reward_mean``, ``kl``, ``entropy``, ``loss``, ``lr``, reward
        failure counts, timings, ...); a step whose admission gates kept no group updates nothing and
        returns the rollout's metrics only. Counts as one of ``train.max_steps``."""
        m: dict = {}
        t0 = time.perf_counter()
        self._waited = 0.0
        busy0 = self._workers_busy()
        batch = self.collect(m)  # rollout + score (+ dynamic sampling refills)
        m["time/rollout_s"] = time.perf_counter() - t0
        m["time/wait_rollout_s"] = self._waited  # the trainer idle, waiting for the engine / workers
        if self._ahead_steps:
            self._prefetch()  # the next steps' rollouts generate while this one updates
        if batch is None:
            self.step_num += 1
            return m
        if self.prm_scorer is not None:
            self.score_steps(batch, m)  # PRM: a score per reasoning step (dense reward)
        self.reference(batch, m)  # old-policy / reference logprobs, values
        self.advantages(batch, m)  # (KL-shaped) rewards -> advantages
        t1 = time.perf_counter()
        m.update(self.update(batch))  # epochs x minibatches optimizer steps
        self.engine.update_weights(self.worker.named_weights(), self.step_num + 1)  # sync weights (on-policy rollouts)
        m["time/update_s"] = time.perf_counter() - t1
        self.step_num += 1
        m["completions_per_s"] = len(batch) * self.rt.world_size / (time.perf_counter() - t0)
        versions = [comp.policy_version for comp in batch.completions]  # policy trained (version step_num - 1) - sampled
        m["offpolicy/staleness"] = self.step_num - 1 - sum(versions) / max(1, len(versions))
        m["offpolicy/staleness_max"] = self.step_num - 1 - min(versions, default=self.step_num - 1)
        if getattr(self.engine, "restarts", 0):
            m["rollout/worker_restarts"] = self.engine.restarts
        if busy0 is not None:  # each role's idle time: the trainer's is time/wait_rollout_s
            wall, busy = time.perf_counter() - t0, self._workers_busy()
            if len(busy) == len(busy0):  # (not across a worker replacement)
                m["time/worker_idle_s"] = max(0.0, wall - sum(b - a for a, b in zip(busy0, busy)) / len(busy))
        return m

    def _workers_busy(self) -> list[float] | None:
        """Cumulative seconds each rollout worker spent generating or loading weights (Ray
        workers); None for an in-process engine, which is never idle apart from the trainer."""
        stats = getattr(self.engine, "worker_stats", None)
        return list(stats()["busy_s"]) if stats is not None else None

    def _submit(self, idx: list[int], step_for: int, round_: int):
        """Start generating the groups of prompts `idx` for step `step_for` (0-based) on this rank's
        share; returns (positions of `idx` this rank generates, the engine's result or a pending one)."""
        c, rt = self.cfg.rl, self.rt
        base = self.cfg.train.seed * 1_000_003 + step_for * 97 + round_
        mine = list(range(rt.rank, len(idx), rt.world_size))  # strided: a round of any size splits
        params = SamplingParams(n=c.samples_per_prompt, temperature=c.temperature, top_p=c.top_p,
                                max_new_tokens=c.max_new_tokens, stop=tuple(c.stop), seed=base + 7919 * rt.rank,
                                seeds=tuple(base * 1009 + j for j in mine) if c.seed_per_prompt else None)
        if not mine:
            return mine, []
        prompts = [self.prompt_ids[idx[j]] for j in mine]
        if self._ahead_steps and hasattr(self.engine, "generate_async"):
            return mine, self.engine.generate_async(prompts, params)
        return mine, self.engine.generate(prompts, params)

    def _prefetch(self) -> None:
        """Asynchronous rollouts (``rl.max_staleness`` K > 0): keep the first sampling round of the
        next K steps generating on the workers while this step updates. Submitted now, they run on
        the weights the workers hold now (a weight update sent later queues behind them), so a batch
        is at most K versions older than the policy it trains."""
        c = self.cfg.rl
        nxt = self.step_num + 1 + len(self._ahead)
        while len(self._ahead) < self._ahead_steps and nxt < self.cfg.train.max_steps:
            idx = self.sampler.take(c.prompts_per_step)
            self._ahead.append((nxt, idx, *self._submit(idx, nxt, 0)))
            nxt += 1

    def _sample(self, n_prompts: int, round_: int, stats: Counter):
        """One sampling round: (prompt indices, their groups of completions, the groups' rewards), the
        same lists on every rank. Under data parallelism each rank generates and scores every N-th
        prompt of the round with its own engine, and the ranks share the results; reward failures are
        counted into `stats` (over all ranks). Round 0 of a step whose rollouts were prefetched
        (asynchronous mode) takes them."""
        c, rt = self.cfg.rl, self.rt
        if round_ == 0 and self._ahead and self._ahead[0][0] == self.step_num and len(self._ahead[0][1]) == n_prompts:
            _, idx, mine, pending = self._ahead.popleft()
            t0 = time.perf_counter()
        else:
            idx = self.sampler.take(n_prompts)
            t0 = time.perf_counter()  # (rollout workers generating synchronously: the trainer waits in the call)
            mine, pending = self._submit(idx, self.step_num, round_)
            if not hasattr(self.engine, "worker_stats"):
                t0 = time.perf_counter()  # an in-process engine: the generation is the trainer's own work
        outs = pending.result() if hasattr(pending, "result") else pending
        self._waited += time.perf_counter() - t0
        rows = [self.rows[idx[j]] for j in mine for _ in range(c.samples_per_prompt)]
        flat = [comp for group in outs for comp in group]
        failures: dict = {}
        groups = []
        if flat:
            out = score(self.reward_fns, rows, flat, c.reward_timeout_s, trl_shapes=self.task is None)
            failures = {kind: dict(getattr(out, kind)) for kind in ("errors", "timeouts", "nans", "missing")}
            groups = [out.total[g * c.samples_per_prompt : (g + 1) * c.samples_per_prompt] for g in range(len(mine))]
        if rt.distributed:
            shared = rt.gather_object((outs, [g.tolist() for g in groups], failures))
            outs, groups, failures = [None] * len(idx), [None] * len(idx), {}
            for r, (o, gs, fails) in enumerate(shared):
                for pos, j in enumerate(range(r, len(idx), rt.world_size)):
                    outs[j], groups[j] = o[pos], torch.tensor(gs[pos], dtype=torch.float32)
                for kind, names in fails.items():
                    for name, k in names.items():
                        failures.setdefault(kind, {})[name] = failures.get(kind, {}).get(name, 0) + k
        self._count_reward_failures(failures, stats)
        return idx, outs, groups

    def _sample_env(self, n_prompts: int, round_: int, m: dict):
        """Episodes of ``samples_per_prompt`` sessions on each of `n_prompts` env rows: (row indices,
        training samples per group, their rewards per group, None); env metrics and failures into `m`."""
        c = self.cfg.rl
        idx = self.sampler.take(n_prompts)
        params = SamplingParams(n=1, temperature=c.temperature, top_p=c.top_p, max_new_tokens=c.max_new_tokens,
                                stop=tuple(c.stop), seed=self.cfg.train.seed * 1_000_003 + self.step_num * 97 + round_)
        outs, em = self.env.rollout(self.engine, self.tokenizer, idx, c.samples_per_prompt, params)
        idx = [i for i in idx for _ in range(self.env.groups_per_row)]  # two-player games: a group per seat
        m.update(em)  # the last sampling round's env metrics
        failed = {k: em[f"env/{k}"] for k in ("env_error", "env_timeout", "env_garbage") if em.get(f"env/{k}")}
        for k, v in failed.items():
            self.counts[k] += v
        if failed:
            totals = {k: self.counts[k] for k in failed}
            self._warn("env_failures", f"environment failures {failed}: those episodes score 0 (so far {totals})")
        rewards = [torch.tensor([e.reward for e in group], dtype=torch.float32) for group in outs]
        return idx, outs, rewards, None

    def collect(self, m: dict) -> RolloutBatch | None:
        """Rollout and score groups; with dynamic sampling keep only groups with reward spread.

        Adds the rollout's metrics to `m`; returns the batch, or None when no group was kept."""
        c, alg = self.cfg.rl, self.alg
        kept: list[tuple[int, list, torch.Tensor, object]] = []  # (row index, completions, rewards, reward output)
        stats = Counter()
        gated = alg.dynamic_sampling or bool(c.reward_band)
        per_row = self.env.groups_per_row if self.env is not None else 1  # two-player games: a group per seat
        want = c.prompts_per_step * per_row  # groups
        for round_ in range(1 + (c.max_refill_rounds if gated else 0)):
            need = -(-(want - len(kept)) // per_row)  # rows
            if need <= 0:
                break
            if self.env is not None:
                idx, outs, groups, out = self._sample_env(need, round_, m)
            else:
                idx, outs, groups = self._sample(need, round_, stats)
                out = None
            stats["sampled_groups"] += len(idx)
            self.sampler.observe(idx, [float(r.mean()) for r in groups])
            for g, (i, r) in enumerate(zip(idx, groups)):
                if len(r) == 0:  # every episode of the group failed before its first token
                    stats["dropped_groups"] += 1
                    continue
                refused = admit(r, alg.dynamic_sampling, c.min_reward_spread, tuple(c.reward_band))
                self._log_prompt(i, r, refused is None)
                if refused is not None:
                    stats["dropped_groups"] += 1
                    stats[f"dropped_{refused}"] += 1
                    continue
                kept.append((i, outs[g], r, out))
        m.update({f"reward/{k}": v for k, v in stats.items()})
        if gated:
            m["dynamic_sampling/kept_groups"] = len(kept)
            if len(kept) < want:
                self._warn("refill", f"the admission gates kept {len(kept)}/{want} groups after {c.max_refill_rounds} refills")
        kept = kept[:want]
        if self.rt.distributed:  # equal shares: a short step trains on a multiple of the rank count
            kept = kept[: len(kept) // self.rt.world_size * self.rt.world_size]
        if not kept:
            self._warn("no_groups", "no group with reward variance this step: nothing to learn, update skipped")
            return None
        if not self.rt.distributed:
            return self._make_batch(kept, m)
        m.update(self._batch_stats(self._make_batch(kept, None, baseline=False)))  # the step's stats over every rank's groups
        length = max(1, max(len(comp.token_ids) for _, group, *_ in kept for comp in group))
        return self._make_batch(self.rt.shard(kept), None, length=length)  # this rank's groups, padded as the others

    def _make_batch(self, kept, m: dict | None, length: int | None = None, baseline: bool = True) -> RolloutBatch:
        """The batch of the groups `kept`; its stats into `m` (None: not); `length`: pad to it."""
        c = self.cfg.rl
        rows = [self.rows[i] for i, group, *_ in kept for _ in group]
        prompt_ids = [getattr(comp, "prompt_ids", None) or self.prompt_ids[i] for i, group, *_ in kept for comp in group]
        completions = [comp for _, group, *_ in kept for comp in group]
        ids, tmask, lmask, rlp, trunc = collate_completions(completions, self.pad_id, self.alg.mask_truncated, length)
        groups = torch.arange(len(kept)).repeat_interleave(torch.tensor([len(group) for _, group, *_ in kept]))
        rewards = torch.cat([r for _, _, r, _ in kept])
        batch = RolloutBatch(rows, prompt_ids, completions, ids, tmask, lmask, rlp, trunc, groups, rewards)
        batch.policy_mask = policy_mask(completions, ids.shape[1])  # multi-turn: env tokens are not the policy's
        batch.token_rewards = token_reward_stream(completions, ids.shape[1])
        if baseline and self.needs is not None and self.needs.baseline_rollout:  # ReMax: a greedy rollout per prompt
            batch.baseline = self._greedy_baseline([i for i, *_ in kept]).repeat_interleave(c.samples_per_prompt)
        if m is not None:
            m.update(self._batch_stats(batch))
        if c.show_every and (self.step_num % c.show_every == 0) and self.rt.is_main and length is None:
            self._show(batch)
        return batch

    def _greedy_baseline(self, idx: list[int]) -> torch.Tensor:
        c = self.cfg.rl
        outs = self.engine.generate([self.prompt_ids[i] for i in idx], SamplingParams(n=1, temperature=0.0, max_new_tokens=c.max_new_tokens, stop=tuple(c.stop)))
        return score(self.reward_fns, [self.rows[i] for i in idx], [o[0] for o in outs], c.reward_timeout_s,
                     trl_shapes=self.task is None).total

    def score_steps(self, batch: RolloutBatch, m: dict) -> None:
        """PRM step scores into the batch; a failure costs this batch its dense reward, not the run."""
        t0 = time.perf_counter()
        try:
            m.update(prm_step_scores(self.prm_scorer, batch, self.tokenizer, self.prm_sep))
            m["prm/errors"] = 0
        except Exception as e:  # any PRM failure: train on the outcome reward alone
            batch.step_scores = batch.step_mask = None
            self.counts["prm_errors"] += 1
            m["prm/errors"] = 1
            warn(f"step {self.step_num + 1}: PRM scoring failed ({type(e).__name__}: {e}); this batch trains on the "
                 f"outcome reward only (PRM failures so far: {self.counts['prm_errors']})")
        m["time/prm_s"] = time.perf_counter() - t0

    def reference(self, batch: RolloutBatch, m: dict) -> None:
        """No-grad passes: old-policy logprobs (when needed), reference logprobs, critic values."""
        c, alg = self.cfg.rl, self.alg
        size, temp, share = c.sequences_per_microbatch, c.temperature, self._share_prompts
        # one optimizer step per rollout: the policy before the update is the one the loss pass runs, so
        # its detached logprobs are the old policy's (decoupled PPO included: no extra forward pass)
        fused = (c.minibatches_per_rollout * c.epochs_per_rollout == 1 and alg.kl_placement != "reward" and self.kind.fuses_old_logp
                 and self.correction in ("none", "decoupled"))
        if self.correction == "bypass":  # the sampler's logprobs are the old policy: the ratio is pi / pi_behaviour
            if alg.kl_placement == "reward":
                raise ConfigError("rl.correction bypass with KL in the reward: the reward's KL needs the trainer's old logprobs; use decoupled")
            batch.old_logp = batch.rollout_logp * batch.sampled_mask
        elif fused and self.correction == "decoupled":
            batch.fused_is = (c.is_cap, c.is_mode)
        elif not fused:
            batch.old_logp = self.worker.logprobs(lambda model: batched_no_grad(
                lambda p, x, k: policy_forward(model, p, x, k, self.pad_id, temp, "none", share)[0], batch, size))
            m.update(mismatch_stats(batch.old_logp, batch))
            if self.correction == "decoupled":  # pi_old (this policy, before the update) / pi_behaviour, per token
                batch.is_weights, st = off_policy_weights(batch.old_logp, batch.rollout_logp, batch.loss_mask,
                                                          c.is_cap, c.is_mode)
                m.update(st)
        if self.worker.has_reference:
            with self.worker.reference() as ref, self.rt.autocast():
                batch.ref_logp = batched_no_grad(lambda p, x, k: policy_forward(ref, p, x, k, self.pad_id, temp, "none", share)[0],
                                                 batch, size)
        if self.critic is not None:
            batch.values = self.critic_worker.logprobs(lambda critic: batched_no_grad(lambda p, x, k: critic(p, x, k, self.pad_id), batch, size))

    @property
    def _share_prompts(self) -> bool:
        """The shared-prompt forward runs two passes per backward; a DDP / FSDP2 module expects one."""
        return self.cfg.rl.share_prompts and not self.rt.distributed

    def advantages(self, batch: RolloutBatch, m: dict) -> None:
        """(KL-shaped) rewards -> advantages (`rl_update.step_advantages`); none for online DPO."""
        if self.kind.advantages:
            m.update(global_step_advantages(self.alg, batch, self.rt, self.cfg.rl.prm_coef, self.cfg.rl.prm_baseline))

    def update(self, batch: RolloutBatch) -> dict:
        """``rl.epochs_per_rollout`` passes over `batch` in ``rl.minibatches_per_rollout`` optimizer
        steps (shuffled; whole groups in order when the loss needs them, e.g. online DPO); returns
        the merged update metrics (loss, kl, entropy, clip fractions, grad_norm, lr, ...)."""
        c, stats = self.cfg.rl, []
        n = len(batch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.train.seed + self.step_num)).tolist()
        per = -(-n // c.minibatches_per_rollout)
        if self.kind.whole_groups:  # e.g. DPO pairs stay whole: mini-batches are cut over groups, in order
            order = list(range(n))
            per = -(-n // c.minibatches_per_rollout // c.samples_per_prompt) * c.samples_per_prompt
        for _ in range(c.epochs_per_rollout):
            for s in range(0, n, per):
                stats.append(self._optimizer_step(batch, sorted(order[s : s + per])))
        return merge_stats(stats)

    def _optimizer_step(self, batch: RolloutBatch, idx: list[int]) -> dict:
        c = self.cfg.rl
        self.model.train()
        spec = UpdateSpec(self.pad_id, c.temperature, c.sequences_per_microbatch, c.max_new_tokens, self._share_prompts)
        with self.rt.autocast():
            st = self.kind.backward(self.worker, batch, idx, self.alg, spec)
        try:
            st["grad_norm"], st["lr"] = self.worker.step(self.step_num, st.get("loss"), self.cfg.optim.max_grad_norm)
        except FloatingPointError as e:
            raise FloatingPointError(f"rl {e}") from None
        if self.critic is not None:
            with self.rt.autocast():
                st.update(update_value(self.critic_worker, batch, idx, self.alg, self.pad_id, c.sequences_per_microbatch,
                                       self.cfg.optim.max_grad_norm, self.step_num))
        return st

    # ------------------------------------------------------------------ health and logging
    def _count_reward_failures(self, failures: dict, stats: Counter) -> None:
        """`failures`: kind (errors, timeouts, nans, missing) -> reward name -> count, of one round."""
        for kind in ("errors", "timeouts", "nans", "missing"):
            k = sum(failures.get(kind, {}).values())
            stats[kind] += k
            self.counts[f"reward_{kind}"] += k
        for kind in ("errors", "timeouts", "nans"):
            bad = {name: v for name, v in failures.get(kind, {}).items() if v}
            if bad:
                self._warn(f"reward_{kind}", f"reward {kind}: {bad} (scored as 0.0; total so far {self.counts[f'reward_{kind}']})")

    def _batch_stats(self, batch: RolloutBatch) -> dict:
        r = batch.rewards
        lengths = batch.token_mask.sum(-1).float()
        return {
            "reward_mean": float(r.mean()), "reward_std": float(r.std()) if len(r) > 1 else 0.0,
            "truncated_share": float(batch.truncated.float().mean()),
            "zero_variance_group_share": float(zero_std_group_fraction(r, batch.group_ids)),
            "completion_tokens_mean": float(lengths.mean()), "completion_tokens_max": float(lengths.max()),
        }

    def _show(self, batch: RolloutBatch) -> None:
        for i in range(min(2, len(batch))):
            console.print(f"  [step {self.step_num + 1}] {prompt_text(batch.rows[i])[:80]!r} -> "
                          f"{batch.completions[i].text[:160]!r} reward {float(batch.rewards[i]):.3g}")

    def _warn(self, kind: str, msg: str) -> None:
        self._warned[kind] += 1
        n = self._warned[kind]
        if (n == 1 or n % 10 == 0) and self.rt.is_main:
            warn(f"step {self.step_num + 1}: {msg}" + (f" (seen {n} times)" if n > 1 else ""))

    def evaluate(self) -> dict:
        """Greedy exact-match accuracy on the held-out prompts (``eval/accuracy``, ...); {} without them."""
        if not self.eval_rows:
            return {}
        n = self.cfg.rl.eval_max_new_tokens or self.cfg.rl.max_new_tokens
        with self.rt.autocast():  # every rank runs it (no collective inside), on the engine's module
            res = exact_match_eval(self.generator, self.tokenizer, self.eval_rows, self.verify, n, self.cfg.rl.rollout_sequences_per_batch)
        res.pop("samples")
        return {f"eval/{k}": v for k, v in res.items()}

    # ------------------------------------------------------------------ loop and checkpoints
    def train(self) -> dict:
        """`step()` until ``train.max_steps``: held-out eval before, every ``train.eval_every`` steps and
        after; metrics logged every ``train.log_every`` steps; checkpoints every ``train.save_every``
        and at the end (Ctrl-C saves the last finished step). Returns the last step's metrics, the
        ``before/eval/*`` and final ``eval/*`` values, ``checkpoint`` (its folder) and ``bad_cases``
        (reward failures and skipped rows, counted by kind)."""
        c, main = self.cfg, self.rt.is_main
        if main:
            console.print(f"rl config: {json.dumps(dataclasses.asdict(c), default=str)}")
            console.print(f"rl sizes: {json.dumps(self.describe(), default=str)}")
        before = self.evaluate() if c.train.eval_every >= 0 and self.step_num == 0 else {}
        if before:
            if main:
                console.print(f"eval before RL: {json.dumps({k: round(v, 4) for k, v in before.items()})}")
            self.logger.log(before, self.step_num)
        last: dict = {}
        with saved_on_interrupt(self, "rl", "step_num"), \
                ProgressBar(c.train.max_steps, f"rl/{c.algo}", c.train.progress and main, start=self.step_num,
                            every=c.train.log_every, every_s=c.train.progress_every_s) as bar:
            while self.step_num < c.train.max_steps:
                fail_point(self.rt, f"step-{self.step_num + 1}")
                m = self.step()
                for msg in health_warnings(m, self.alg, c.rl.min_entropy, c.rl.max_kl):
                    self._warn(msg.split(":")[0], msg)
                if c.train.eval_every > 0 and self.step_num % c.train.eval_every == 0 and self.step_num < c.train.max_steps:
                    m.update(self.evaluate())
                self.history.append({"step": self.step_num, **{k: v for k, v in m.items() if isinstance(v, (int, float))}})
                if self.step_num % c.train.log_every == 0 or "eval/accuracy" in m:
                    self.logger.log(m, self.step_num)
                if c.train.save_every and self.step_num % c.train.save_every == 0:
                    self.save()
                bar.update(self.step_num, metrics=m, reward=m.get("reward_mean", float("nan")), kl=m.get("kl", 0.0))
                last = m
        final = self.evaluate()
        if final:
            self.logger.log(final, self.step_num)
            if main:
                console.print(f"eval after RL: {json.dumps({k: round(v, 4) for k, v in final.items()})}")
        if (self.counts or self.load_counts) and main:
            console.print(f"rl bad cases: {json.dumps({**dict(self.counts), **dict(self.load_counts)})}")
        path = self.save()
        self.logger.close()
        if self._prompt_log is not None:
            self._prompt_log.close()
        if hasattr(self.engine, "shutdown"):  # rollout workers (Ray actors) end with the run
            self.engine.shutdown()
        return {**last, **{f"before/{k}": v for k, v in before.items()}, **final, "checkpoint": str(path),
                "bad_cases": {**dict(self.counts), **dict(self.load_counts)}}

    def save(self) -> Path:
        """Write a checkpoint of the current step to the run folder (model or LoRA adapter, tokenizer,
        optimizer, schedule, prompt sampler and critic states); returns its folder. Collective under
        data parallelism: every rank calls it, rank 0 writes (FSDP2 states gathered first)."""
        rt = self.rt
        shards = sharded_dir(rt, self.run_dir, self.step_num)
        model_state, opt_state, fmt = self.worker.checkpoint_state(shards)
        state = {"optimizer": opt_state, "optimizer_format": fmt, "scheduler": self.sched.state_dict(), "data": self.sampler.state()}
        ahead = rt.gather_object(self._settle_ahead())  # asynchronous mode: the rollouts already generated ahead
        if self.critic_worker is not None:
            c_model, c_opt, c_fmt = self.critic_worker.checkpoint_state()
            state.update(critic=c_model if c_model is not None else self.critic.state_dict(), critic_optimizer=c_opt,
                         critic_optimizer_format=c_fmt, critic_scheduler=self.critic_worker.sched.state_dict())
        rngs = rt.gather_object(rng_state())
        path = self.run_dir / "checkpoints" / f"step-{self.step_num:07d}"
        if rt.is_main:
            state.update(world_size=rt.world_size, rng_per_rank=rngs)
            if any(ahead):
                state["ahead_per_rank"] = ahead
            path = save_checkpoint(self.run_dir, self.step_num, self.model, self.tokenizer, state, self.cfg.train.keep_checkpoints,
                                   model_state=model_state, move_in={"optimizer": shards} if fmt == "dcp" else None)
            if shards is not None:
                shutil.rmtree(shards, ignore_errors=True)  # left over when this step was already saved
        rt.barrier()
        return path

    def _resume(self) -> None:
        rt = self.rt
        st = restore_checkpoint(self.run_dir, self.model, self.opt, self.sched, self.cfg.optim.lr, weights=False,
                                load_optimizer=self.worker.load_optimizer, rank=rt.rank, world_size=rt.world_size,
                                verbose=rt.is_main)
        if st is None:
            return
        if self.critic_worker is not None:  # its weights were loaded before placement
            self.critic_worker.load_optimizer(st["critic_optimizer"], st.get("critic_optimizer_format", "index"))
            if "critic_scheduler" in st:
                self.critic_worker.sched.load_state_dict(st["critic_scheduler"])
        self.sampler.load_state(st["data"])
        self.step_num = st["step"]
        self.engine.update_weights(self.worker.named_weights(), self.step_num)
        self._restore_ahead(st.get("ahead_per_rank"), st.get("world_size", 1))

    def _settle_ahead(self) -> list:
        """This rank's rollouts generated ahead (asynchronous mode), waited for, as plain data for a
        checkpoint: [(step, prompt indices, this rank's positions, groups of completion dicts)]. The
        queue keeps the finished results, so nothing is generated twice."""
        settled = []
        for k, (step, idx, mine, pending) in enumerate(self._ahead):
            outs = pending.result() if hasattr(pending, "result") else pending
            self._ahead[k] = (step, idx, mine, outs)
            settled.append((step, idx, mine, [[dataclasses.asdict(comp) for comp in g] for g in outs]))
        return settled

    def _restore_ahead(self, per_rank, saved_world: int) -> None:
        """Put the checkpoint's rollouts generated ahead back in the queue, so an asynchronous run
        resumes on the very samples (and the behaviour policies) it would have trained on. With
        another rank count, or with ``rl.max_staleness`` now 0, the same prompts are generated again on
        the weights just loaded (a valid, less stale, but not an identical continuation)."""
        if not per_rank or not any(per_rank):
            return
        if saved_world == self.rt.world_size and self._ahead_steps:
            for step, idx, mine, groups in per_rank[self.rt.rank]:
                self._ahead.append((step, idx, mine, [[Completion(**d) for d in g] for g in groups]))
            return
        if self.rt.is_main:
            console.print(f"resume: {len(per_rank[0])} steps of rollouts generated ahead by {saved_world} rank(s) are "
                          f"generated again (now {self.rt.world_size} rank(s), rl.max_staleness {self._ahead_steps})")
        for step, idx, _, _ in per_rank[0]:  # the prompts were drawn already: the next steps' first rounds
            self._ahead.append((step, idx, *self._submit(idx, step, 0)))


HELP = "online RL with verifiable rewards (--algo grpo|dr_grpo|dapo|rloo|reinforce_pp|remax|ppo|online_dpo)"
CONFIG = RLConfig


def run(cfg: RLConfig) -> dict:
    return RLTrainer(cfg).train()


def run_rl_stage(model, tokenizer, cfg: RLConfig, reward_fns=None) -> dict:
    """Train `model` in place with online RL (for `posttrain demo`: SFT -> RL -> eval).

    Returns the final metrics plus ``eval_before`` / ``eval_after`` (greedy held-out accuracy) and
    ``curves`` (per-step ``step``, ``reward_mean``, ``completion_tokens_mean``) for plots.
    """
    trainer = RLTrainer(cfg, model=model, tokenizer=tokenizer, reward_fns=reward_fns)
    out = trainer.train()
    keys = ("step", "reward_mean", "completion_tokens_mean", "kl", "entropy", "truncated_share")
    out["curves"] = {k: [h.get(k, float("nan")) for h in trainer.history] for k in keys}
    out["eval_before"] = out.get("before/eval/accuracy")
    out["eval_after"] = out.get("eval/accuracy")
    out["model"] = trainer.model
    return out
