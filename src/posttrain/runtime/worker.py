"""The policy worker: the one owner of a trained module on the runtime seam.

A `PolicyWorker` holds what every trainer used to assemble for itself: the module (LoRA applied,
gradient checkpointing on when asked), its placement (device, fp32 head under bf16, DDP or FSDP2;
`posttrain.runtime.parallel`), the AdamW optimizer and its schedule, a frozen reference, and the
checkpoint state. Trainers keep their losses and data layouts; the worker gives them:

- ``train_model``: the module the training forward goes through (the DDP wrapper, the FSDP2-sharded
  module, or the module itself), and ``model``, the plain module (evaluation, saving, LoRA);
- ``accumulate(last)``: the context of one micro-batch's forward and backward (gradient sync skipped
  on all but the last micro-batch of an optimizer step), and ``backward(loss)``, which scales a loss
  already divided by a *global* normalizer so the ranks' averaged gradients are the global sum;
- ``step(step, loss)``: clip, refuse a non-finite gradient (naming the step and the loss), AdamW and
  the schedule, clear the gradients: the one optimizer-step path of every trainer;
- ``reference()``: the frozen reference policy as a context: under LoRA the same module with its
  adapter disabled (no copy of the base); otherwise a frozen copy made once, placed like the policy;
- ``named_weights()``: (name, tensor) pairs in Hugging Face names for a rollout engine: LoRA merged,
  an FSDP2 model gathered (on every rank: each rank's colocated engine needs the whole model);
- ``checkpoint_state`` / ``load_optimizer``: the checkpoint's model and optimizer state (rank 0 writes
  the full model; under FSDP2 every rank writes its optimizer shards through
  `torch.distributed.checkpoint`), resumable under another ``parallel`` setting and rank count.

It is the only code that knows about peft (`apply_lora`) besides saving and loading adapters
(`posttrain.models.lora`). `worker_of(module)` adapts a plain module (the functional tests of the
update rules call them on bare modules) to the same interface on one CPU process.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import torch

from posttrain.config import ConfigError
from posttrain.runtime.device import Runtime
from posttrain.runtime.parallel import (
    broadcast_from_rank0, full_model_state, grad_sync, is_peft, keep_fp32, load_optimizer_state, optimizer_state, output_head,
    place_model, shard_fsdp2,
)

_ONE = Runtime()


def apply_lora(model, cfg, task_type: str = "CAUSAL_LM", modules_to_save=None):
    """`model` with a peft LoRA adapter when ``cfg.lora_rank > 0`` (on the ``cfg.lora_targets`` the
    model has), else `model` itself."""
    if cfg is None or cfg.lora_rank <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    targets = [t for t in cfg.lora_targets if any(n.endswith(t) for n, _ in model.named_modules())]
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type=task_type, modules_to_save=modules_to_save)
    return get_peft_model(model, lcfg)


def merged_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """A module's weights in Hugging Face names, a peft adapter merged into a copy of the base."""
    plain = copy.deepcopy(model).merge_and_unload() if is_peft(model) else model
    yield from ((k, v.detach()) for k, v in plain.state_dict().items())


def build_optimizer(model, cfg, max_steps: int):
    """AdamW over the trainable parameters and a LambdaLR schedule: linear warm-up, then cosine to
    ``min_lr_ratio`` over `max_steps` (or constant)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, foreach=True)

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos

    if cfg.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule must be 'cosine' or 'constant', got '{cfg.schedule}'")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class PolicyWorker:
    """Owns one trained module on the runtime (see the module docstring).

    `model`: the module as loaded (before LoRA). `model_cfg`: a `ModelConfig` (``lora_*``,
    ``gradient_checkpointing``) or None. `optim` / `max_steps`: the AdamW settings and the number of
    optimizer steps the schedule spans (None: no optimizer, e.g. a frozen scorer). `reference`: keep a
    frozen reference policy (`reference()`). `lora`: ``fn(model) -> model`` replacing `apply_lora`
    (a reward model's adapter saves its head). `resume_dir`: a run folder whose latest checkpoint's
    weights are loaded before placement (the optimizer state comes with `restore`).
    """

    def __init__(self, model, rt: Runtime = _ONE, model_cfg=None, optim=None, max_steps: int = 1, *,
                 reference: bool = False, lora: Callable | None = None, resume_dir: Path | None = None,
                 engine: bool = False):
        self.rt = rt
        if model_cfg is not None and getattr(model_cfg, "gradient_checkpointing", False):
            model.gradient_checkpointing_enable()
        wants_lora = model_cfg is not None and getattr(model_cfg, "lora_rank", 0) > 0
        self._ref = None
        if reference and not wants_lora:  # a frozen copy of the starting weights (LoRA: the adapter is disabled instead)
            self._ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.model = lora(model) if lora is not None else apply_lora(model, model_cfg)
        self.lora = is_peft(self.model)
        self._reference = reference
        if resume_dir is not None:
            from posttrain.checkpoint import load_checkpoint_weights

            load_checkpoint_weights(resume_dir, self.model)
        # FSDP2 shards the module in place: a rollout / eval engine needs a plain copy, made now
        self._engine_copy = copy.deepcopy(self.model).eval().requires_grad_(False) if engine and rt.parallel == "fsdp2" else None
        if self._engine_copy is not None:
            self._engine_copy.to(rt.device)
        self.train_model = place_model(self.model, rt)
        if self._ref is not None:
            self._ref = place_frozen(self._ref, rt)
        self.opt = self.sched = None
        if optim is not None:
            self.opt, self.sched = build_optimizer(self.model, optim, max_steps)

    # -- training ---------------------------------------------------------------------------
    def accumulate(self, last: bool = True):
        """The context of one micro-batch's forward and backward; gradients are reduced across ranks
        only when `last` (the step's final micro-batch)."""
        return grad_sync(self.train_model, self.rt, sync=last)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward a loss already divided by the step's global normalizer (see `Runtime.grad_scale`)."""
        (loss * self.rt.grad_scale if self.rt.distributed else loss).backward()

    def step(self, step: int, loss: float | None = None, max_grad_norm: float = 1.0) -> tuple[float, float]:
        """Clip to `max_grad_norm`, refuse a non-finite gradient norm (naming the 1-based step and the
        loss), AdamW step, schedule step, clear gradients. Returns (grad norm before clipping, lr used)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"step {step + 1}: gradient norm is {float(grad_norm)} (loss {loss})")
        lr = self.sched.get_last_lr()[0] if self.sched is not None else float("nan")
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(grad_norm), lr

    @torch.no_grad()
    def logprobs(self, fn: Callable, *args, **kwargs):
        """`fn(module, *args)` without gradients, in eval mode, under the runtime's autocast (a
        no-grad pass of the policy: old-policy logprobs, rewards of a scorer)."""
        was = self.model.training
        self.model.eval()
        try:
            with self.rt.autocast():
                return fn(self.train_model, *args, **kwargs)
        finally:
            self.model.train(was)

    # -- the reference ------------------------------------------------------------------------
    @property
    def has_reference(self) -> bool:
        return self._reference

    @contextmanager
    def reference(self):
        """The frozen reference policy for a no-grad pass: the adapter-disabled module under LoRA, the
        frozen copy otherwise."""
        if not self._reference:
            raise RuntimeError("this worker was built without a reference (reference=True)")
        if self._ref is not None:
            yield self._ref
            return
        was = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield self.train_model
        finally:
            self.model.train(was)

    def set_reference(self, module) -> None:
        """Use `module` (placed like the policy, frozen) as the reference from now on (a resumed run's
        starting model)."""
        self._reference = True
        self._ref = place_frozen(module.eval().requires_grad_(False), self.rt)

    # -- weights for engines and checkpoints ----------------------------------------------------
    def named_weights(self):
        """(name, tensor) pairs of the whole policy in Hugging Face names, LoRA merged. Collective
        under FSDP2 (the shards are gathered on every rank); lazy otherwise, so an engine colocated
        on the same module (`HFEngine`) skips the copy."""
        if self.rt.parallel == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
            return list(sd.items())
        from posttrain.rollout.base import PolicyWeights

        return PolicyWeights(self.model)

    def engine_model(self):
        """A module a rollout engine can run: the plain module itself, except under FSDP2, where its
        parameters are shards: then a plain, unsharded copy (one per rank, as a colocated inference
        engine holds its own weights; the worker needs ``engine=True``), loaded with the current
        weights here (collective) and kept current by the engine's `update_weights(named_weights())`."""
        if self.rt.parallel != "fsdp2":
            return self.model
        if self._engine_copy is None:
            raise RuntimeError("under runtime.parallel=fsdp2 a worker that generates needs engine=True")
        with torch.no_grad():
            state = dict(self.named_weights())
            for k, v in self._engine_copy.state_dict().items():
                v.copy_(state[k])
        return self._engine_copy

    def checkpoint_state(self, sharded_dir: Path | None = None) -> tuple[dict | None, dict | None, str]:
        """(full model state or None, optimizer state, its format) for a checkpoint.

        Collective under FSDP2: the full model state is gathered to rank 0 (the Hugging Face folder
        rank 0 writes), and with `sharded_dir` the optimizer state is not gathered: every rank writes
        its own shards there through `torch.distributed.checkpoint` (format ``dcp``; the state
        returned is None). Without it the optimizer state is gathered to rank 0 (``fqn``). Otherwise
        the plain module saves itself (model state None) and the optimizer's own state dict is
        returned (``index``)."""
        model_state = full_model_state(self.model, self.rt)
        if self.opt is None:
            return model_state, None, "index"
        if self.rt.parallel == "fsdp2" and sharded_dir is not None:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            dcp.save({"optimizer": get_optimizer_state_dict(self.model, self.opt)}, checkpoint_id=str(sharded_dir))
            return model_state, None, "dcp"
        opt_state, fmt = optimizer_state(self.model, self.opt, self.rt)
        return model_state, opt_state, fmt

    def load_optimizer(self, state: dict | None, fmt: str = "index", folder: Path | None = None) -> None:
        """Load a checkpoint's optimizer state in any of `checkpoint_state`'s formats, under any
        ``parallel`` and rank count (``dcp`` shards are read from ``folder/optimizer`` and resharded
        to this run's layout: whole tensors without FSDP2)."""
        if fmt != "dcp":
            load_optimizer_state(self.model, self.opt, self.rt, state, fmt)
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        target = {"optimizer": get_optimizer_state_dict(self.model, self.opt)}  # the layout to fill (states initialised)
        dcp.load(target, checkpoint_id=str(Path(folder) / "optimizer"), no_dist=not self.rt.distributed)
        set_optimizer_state_dict(self.model, self.opt, target["optimizer"])


def place_frozen(module, rt: Runtime):
    """A frozen module (a reference policy) placed for no-grad passes beside the policy: on the
    device, fp32 head under bf16, sharded like the policy under FSDP2 (every rank runs the same
    passes), replicated otherwise (no DDP wrapper: nothing is reduced)."""
    module.to(rt.device)
    if rt.compute_dtype != torch.float32:
        keep_fp32(output_head(module))
    if rt.parallel == "fsdp2":
        shard_fsdp2(module)
    elif rt.distributed:
        broadcast_from_rank0(module)
    return module


class _LocalWorker:
    """`worker_of(module)`: the worker interface over a bare module in one CPU process."""

    rt = _ONE

    def __init__(self, module):
        self.model = self.train_model = module

    def accumulate(self, last: bool = True):
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def worker_of(obj):
    """`obj` if it is a worker (has ``accumulate``), else a one-process worker over the module `obj`."""
    return obj if hasattr(obj, "accumulate") and hasattr(obj, "train_model") else _LocalWorker(obj)
