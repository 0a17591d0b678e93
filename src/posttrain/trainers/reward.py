"""Bradley-Terry reward models on a causal LM backbone (`posttrain rm`).

Papers: Ouyang et al. 2022, "Training language models to follow instructions with human feedback"
(InstructGPT), Eq. 1: a scalar head on the language model, trained on pairs with
-log sigma(r(x, y_w) - r(x, y_l)); the optional per-pair margin is Llama 2's (Touvron et al. 2023,
Eq. 2) and the centering term is Eisenstein et al. 2023 (both in `posttrain.losses.reward`).

The reward model is the backbone's `...ForSequenceClassification` class (num_labels=1) built from
the causal config with the causal backbone weights copied in, so the saved folder loads with
`AutoModelForSequenceClassification.from_pretrained`. The reward is the head's output at the last
non-pad token (the Hugging Face pooling, so training and loading score identically). Chosen and
rejected run in one forward pass of 2B right-padded rows.

Departures: the head starts from the model's own initializer (InstructGPT does not say); with LoRA
the head is trained in full (`modules_to_save`) and the final folder holds merged weights.
Held-out evaluation is pairwise accuracy (share of pairs with r_w > r_l) and the mean margin.

Runtime (`posttrain.runtime`): as in SFT, the model and batches live on ``runtime.device``, bf16 is
autocast with the ``score`` head (the reward) in fp32, and under torchrun with
``runtime.parallel ddp|fsdp2`` each rank takes a contiguous 1/N share of every step's
``rm.pairs_per_step`` pairs; the loss is summed over pairs and divided by the global pair count, so N
ranks give the update of one process. Rank 0 writes metrics, checkpoints and ``out/model``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from posttrain.checkpoint import restore_checkpoint
from posttrain.configs import RewardConfig, RewardOptions  # noqa: F401  (re-exported)
from posttrain.logging import MetricsLogger, console
from posttrain.losses.reward import bradley_terry_loss
from posttrain.models import attention, load_model_and_tokenizer
from posttrain.runtime.device import Runtime
from posttrain.runtime.parallel import full_model_state
from posttrain.runtime.worker import PolicyWorker, apply_lora
from posttrain.trainers.common import (
    DataOrder, ModelConfig, NullLogger, bind_inputs, check_global_batch,
    save_run_checkpoint, seed_everything, start_run, training_loop,
)
from posttrain.trainers.pairs import TokenizedPair, load_pairs, pair_batch, tokenize_pairs


def reward_model_from_causal(causal, pad_token_id: int, seed: int = 0):
    """A `...ForSequenceClassification` (num_labels=1) with the causal model's backbone weights."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal.config)
    config.num_labels, config.pad_token_id, config.architectures = 1, pad_token_id, None
    config.problem_type = "regression"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rm = AutoModelForSequenceClassification.from_config(config, attn_implementation=causal.config._attn_implementation)
    state = {k: v for k, v in causal.state_dict().items() if not k.startswith("lm_head.")}
    missing, unexpected = rm.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("score.")]
    if missing or unexpected:
        raise RuntimeError(f"cannot build a reward model from {type(causal).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return rm.to(next(causal.parameters()).dtype)


def load_reward_backbone(cfg: RewardConfig):
    """(reward model, tokenizer): a saved reward model folder as is, anything else via its causal LM."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(cfg.model.name)
    if (path / "config.json").exists():
        arch = (AutoConfig.from_pretrained(path).architectures or [""])[0]
        if arch.endswith("ForSequenceClassification"):
            tok = AutoTokenizer.from_pretrained(path)
            return AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=attention.register()), tok
    causal, tok = load_model_and_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code, seed=cfg.train.seed)
    return reward_model_from_causal(causal, tok.pad_token_id, cfg.train.seed), tok


def pair_rewards(rm, pairs: list[TokenizedPair], pad_id: int, rt: Runtime | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards (B,), rejected rewards (B,)) from one forward pass over 2B rows (on the
    runtime's device, under its autocast; the rewards are fp32)."""
    rt = rt or Runtime()
    batch = pair_batch(pairs, pad_id)
    ids, mask = batch.input_ids.to(rt.device), batch.attention_mask.to(rt.device)
    with rt.autocast():
        r = rm(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].float()
    return r[: len(pairs)], r[len(pairs):]


def _apply_lora(rm, mcfg: ModelConfig):
    """A reward model's adapter trains (and saves) its scalar head too."""
    return apply_lora(rm, mcfg, task_type="SEQ_CLS", modules_to_save=["score"])


class RewardTrainer:
    """A Bradley-Terry reward model (see the module docstring) on preference rows (``prompt``,
    ``chosen``, ``rejected``, or implicit prompts).

    `model`: a name or folder (a causal LM gets a scalar head; a saved reward model folder is trained
    further), or a ``...ForSequenceClassification`` module given with its `tokenizer`; None loads
    ``cfg.model.name``. `train_data` / `eval_data`: a path (or ``task:NAME``), a list of dicts, or a
    ``datasets.Dataset``; they replace ``cfg.data.path`` / ``cfg.data.eval_path`` (see
    `posttrain.trainers.common.bind_inputs`). Rows from Python are used whole (held-out pairs come
    from `eval_data`). `train()` also writes ``out/model``, loadable with
    ``AutoModelForSequenceClassification.from_pretrained``.
    """

    def __init__(self, cfg: RewardConfig, model=None, tokenizer=None, *, train_data=None, eval_data=None):
        cfg, model, train_rows, eval_rows = bind_inputs(cfg, model, train_data, eval_data)
        self.cfg = cfg
        self.rt, self.resume_from = start_run(cfg, "rm", (cfg.model.name,))
        check_global_batch(self.rt, "rm.pairs_per_step", cfg.rm.pairs_per_step)
        seed_everything(cfg.train.seed)
        train, self.task = load_pairs(cfg.data, "train", source=train_rows)  # the data first: a bad row is reported before any model is loaded
        evals, _ = load_pairs(cfg.data, "eval", source=eval_rows)
        if model is None:
            model, tokenizer = load_reward_backbone(cfg)
        if model.config.pad_token_id is None:
            raise ValueError("the reward model's config has no pad_token_id (needed to find the last real token)")
        self.tokenizer = tokenizer
        self.pairs = tokenize_pairs(tokenizer, train, cfg.data.max_length, cfg.rm.margin_column)
        self.eval_pairs = tokenize_pairs(tokenizer, evals, cfg.data.max_length, cfg.rm.margin_column) if evals else []
        self.run_dir = Path(cfg.train.out)
        self.worker = PolicyWorker(model, self.rt, cfg.model, cfg.optim, cfg.train.max_steps, lora=lambda m: _apply_lora(m, cfg.model),
                                   resume_dir=self.run_dir if cfg.train.resume else None)
        self.model, self.train_model = self.worker.model, self.worker.train_model
        self.opt, self.sched = self.worker.opt, self.worker.sched
        self.order = DataOrder(len(self.pairs), cfg.train.seed)
        self.step = 0
        if cfg.train.resume:
            self._resume()
        self.logger = (MetricsLogger(self.run_dir, cfg.train.loggers, dataclasses.asdict(cfg), resume=cfg.train.resume)
                       if self.rt.is_main else NullLogger())

    def _loss(self, pairs: list[TokenizedPair], num_pairs: int) -> tuple[torch.Tensor, dict]:
        chosen, rejected = pair_rewards(self.train_model, pairs, self.tokenizer.pad_token_id, self.rt)
        margin = torch.tensor([p.margin for p in pairs], device=self.rt.device) if self.cfg.rm.margin_column else None
        loss, stats = bradley_terry_loss(chosen, rejected, margin=margin, center_coef=self.cfg.rm.center_coef)
        return loss.sum() / num_pairs, {k: float(v) for k, v in stats.items()}

    def train_step(self) -> dict:
        """One optimizer step over ``rm.pairs_per_step`` pairs; returns its metrics (loss, grad_norm,
        lr, pairs, accuracy, margin, ...)."""
        c, rt = self.cfg, self.rt
        n_global = c.rm.pairs_per_step
        idx = rt.shard(self.order.take(n_global))  # this rank's share of the global batch
        self.model.train()
        total, stats_sum = 0.0, {}
        starts = range(0, len(idx), c.rm.pairs_per_microbatch)
        for k, i in enumerate(starts):
            chunk = [self.pairs[j] for j in idx[i : i + c.rm.pairs_per_microbatch]]
            with self.worker.accumulate(last=k == len(starts) - 1):
                loss, stats = self._loss(chunk, n_global)
                self.worker.backward(loss)
            total += float(loss.detach())
            for key, v in stats.items():
                stats_sum[key] = stats_sum.get(key, 0.0) + v * len(chunk) / n_global
        if rt.distributed:
            total = rt.all_reduce_sum(total)
            stats_sum = dict(zip(stats_sum, rt.all_reduce_sum(torch.tensor(list(stats_sum.values()), dtype=torch.float64, device=rt._comm_device)).tolist()))
        grad_norm, lr = self.worker.step(self.step, total, c.optim.max_grad_norm)
        self.step += 1
        return {"loss": total, "grad_norm": grad_norm, "lr": lr, "pairs": n_global, **stats_sum}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out pairwise accuracy (r_w > r_l) and mean margin."""
        if not self.eval_pairs:
            return {}
        self.model.eval()
        n = self.cfg.rm.eval_pairs_per_batch
        parts = [pair_rewards(self.model, self.eval_pairs[i : i + n], self.tokenizer.pad_token_id, self.rt) for i in range(0, len(self.eval_pairs), n)]
        chosen, rejected = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        self.model.train()
        return {"eval/pairwise_accuracy": float((chosen > rejected).float().mean()), "eval/margin": float((chosen - rejected).mean()),
                "eval/rewards/chosen": float(chosen.mean()), "eval/rewards/rejected": float(rejected.mean()), "eval/pairs": len(chosen)}

    def _resume(self) -> None:
        rt = self.rt
        st = restore_checkpoint(self.run_dir, self.model, self.opt, self.sched, self.cfg.optim.lr, weights=False,
                                load_optimizer=self.worker.load_optimizer,
                                rank=rt.rank, world_size=rt.world_size, verbose=rt.is_main)
        if st is not None:
            self.order = DataOrder(len(self.pairs), self.cfg.train.seed, **st["data"])
            self.step = st["step"]

    def save(self) -> Path:
        """Checkpoint the current step into ``out/checkpoints/step-NNNNNNN``; returns its folder
        (collective under data parallelism: every rank calls it, rank 0 writes)."""
        return save_run_checkpoint(self, self.cfg.train.keep_checkpoints)

    def export(self) -> Path:
        """Write `out/model`: a plain `AutoModelForSequenceClassification` folder (LoRA merged); rank 0
        writes (an FSDP2 model's full state gathered first), every rank returns the folder."""
        target = self.run_dir / "model"
        full = full_model_state(self.model, self.rt)
        if self.rt.is_main:
            if full is not None:
                self.model.save_pretrained(target, state_dict=full)
            else:
                model = copy.deepcopy(self.model).merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
                model.save_pretrained(target)
            self.tokenizer.save_pretrained(target)
        self.rt.barrier()
        return target

    def describe(self) -> dict:
        """The run's derived sizes: parameters, trainable parameters, train and eval pairs."""
        return {"parameters": sum(p.numel() for p in self.model.parameters()),
                "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                "train_pairs": len(self.pairs), "eval_pairs": len(self.eval_pairs)}

    def train(self) -> dict:
        """Train to ``train.max_steps``, evaluate, save the checkpoint and export ``out/model``; returns
        the last step's metrics, the final ``eval/*``, ``checkpoint`` and ``model`` (folders)."""
        c = self.cfg
        if self.rt.is_main:
            console.print(f"rm config: {json.dumps(dataclasses.asdict(c), default=str)}")
            console.print(f"rm sizes: {json.dumps(self.describe())}")
        out = training_loop(self, c.train, "rm", "pairs", lambda m: {"loss": m["loss"], "acc": m["accuracy"]})
        path = self.save()
        model_dir = self.export()
        self.logger.close()
        return {**out, "checkpoint": str(path), "model": str(model_dir)}


HELP = "Bradley-Terry reward model on a causal LM backbone (pairwise accuracy eval)"
CONFIG = RewardConfig


def run(cfg: RewardConfig) -> dict:
    return RewardTrainer(cfg).train()
