"""Placing a model on the runtime: device, fp32 head under bf16, DDP or FSDP2; and the state that
a rank-0 checkpoint needs from a wrapped model.

`place_model(model, rt) -> train_model` moves `model` to ``rt.device`` and returns the module the
training forward must go through:

- ``parallel none`` (and every world of one): `model` itself.
- ``ddp``: ``DistributedDataParallel(model)`` (Li et al. 2020, "PyTorch Distributed: Experiences on
  Accelerating Data Parallel Training"): parameters broadcast from rank 0 at wrap time, gradients
  all-reduced (averaged) in buckets during the backward pass. `model` stays the plain module (for
  evaluation, saving, LoRA); only the training forward goes through the wrapper, because DDP's
  reducer is armed by the wrapper's forward.
- ``fsdp2``: ``fully_shard`` on every decoder layer, then on the root (Zhao et al. 2023, "PyTorch
  FSDP: Experiences on Scaling Fully Sharded Data Parallel"; FSDP2 is the per-parameter DTensor
  rewrite). Each rank keeps 1/N of every parameter, gradient and AdamW moment; a layer's parameters
  are all-gathered just before its forward and backward and its gradients reduce-scattered
  (averaged) after. `fully_shard` changes `model` in place, so `model` is the train model. Every
  rank first takes rank 0's parameters (a broadcast), as DDP does, so a rank-dependent
  initialisation cannot silently shard different models. Verified on CPU with gloo (torch 2.13):
  forward, backward, `clip_grad_norm_` (DTensor gradients, the norm comes back replicated),
  AdamW on DTensors, `get_model_state_dict` / `get_optimizer_state_dict` with full state dicts and
  `set_optimizer_state_dict`, and `torch.distributed.checkpoint` save / load of the sharded
  optimizer state (`PolicyWorker.checkpoint_state`: every rank writes its shards; a later run under
  any ``parallel`` and rank count reads them back resharded). Not covered yet: LoRA (peft) under
  fsdp2 (refused) and FSDP2's `MixedPrecisionPolicy` (bf16 all-gathers; here bf16 is autocast on fp32
  shards, the same numerics as ``none`` / ``ddp`` at twice the all-gather bytes). The model itself
  is still gathered to rank 0 for the Hugging Face checkpoint (what evaluation, export and a resume
  under any setting read), so one rank holds the whole model while saving.

bf16: `keep_fp32(head)` makes the output head (``lm_head``, a reward model's ``score``) run outside
autocast on fp32 inputs, so logits — and the log-probabilities and losses computed from them — are
fp32 while the decoder's matmuls are bf16 (`Runtime.autocast`). It swaps the module's class for a
subclass, so the state dict, `deepcopy` and `save_pretrained` are unchanged.

Gradient accumulation: `grad_sync(train_model, rt, sync)` skips the all-reduce / reduce-scatter on
all micro-batches but the last (DDP ``no_sync``; FSDP2 ``set_requires_gradient_sync``), so each step
reduces once, and ranks only have to agree on the number of micro-batches (the trainers give every
rank an equal share of each step's batch).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from posttrain.config import ConfigError
from posttrain.runtime.device import Runtime


class _Fp32Forward:
    """Mixin: the forward runs with autocast off, on fp32 floating inputs (see `keep_fp32`)."""

    _posttrain_fp32 = True

    def forward(self, *args, **kwargs):
        args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        device_type = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return super().forward(*args, **kwargs)


def keep_fp32(module: torch.nn.Module | None) -> torch.nn.Module | None:
    """Make `module` (an output head) compute in fp32 under autocast; idempotent; None passes."""
    if module is None or getattr(type(module), "_posttrain_fp32", False):
        return module
    cls = type(module)
    module.__class__ = type(f"Fp32{cls.__name__}", (_Fp32Forward, cls), {})
    return module


def output_head(model) -> torch.nn.Module | None:
    """The module that produces the logits: a causal LM's output embeddings, a reward model's
    ``score`` (PEFT-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if isinstance(head, torch.nn.Module):
        return head
    try:
        return base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks FSDP2 shards one by one (``model.model.layers`` for Llama/Qwen2)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                 "backbone.layers", "lm.model.layers"):  # an RL critic's backbone, a PRM's language model
        node = base
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, torch.nn.ModuleList) and len(node):
            return list(node)
    raise ConfigError(f"runtime.parallel=fsdp2: cannot find the decoder layers of {type(base).__name__} "
                      "(looked for model.layers, transformer.h, gpt_neox.layers); use --runtime.parallel ddp")


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def place_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """Move `model` to the runtime's device, keep its head in fp32 under bf16, and wrap or shard it
    for ``rt.parallel``; returns the module the training forward goes through (see the module docstring)."""
    model.to(rt.device)
    if rt.compute_dtype != torch.float32:
        keep_fp32(output_head(model))
    if rt.parallel == "none":
        return model
    if rt.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if rt.parallel == "fsdp2":
        if is_peft(model):
            raise ConfigError("runtime.parallel=fsdp2 with LoRA (model.lora_rank > 0) is not supported yet; use --runtime.parallel ddp")
        return shard_fsdp2(model)
    raise ConfigError(f"runtime.parallel={rt.parallel!r}: expected none, ddp or fsdp2")


def broadcast_from_rank0(module) -> None:
    """Every rank takes rank 0's parameters and buffers (in place)."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def shard_fsdp2(module):
    """`module` with rank 0's weights, ``fully_shard`` on each decoder layer, then on the root (in place)."""
    from torch.distributed.fsdp import fully_shard

    broadcast_from_rank0(module)
    for layer in decoder_layers(module):
        fully_shard(layer)
    fully_shard(module)
    return module


def grad_sync(train_model, rt: Runtime, sync: bool):
    """Context for one micro-batch's backward: ``sync=False`` accumulates locally (no collective)."""
    if sync or rt.parallel == "none":
        if rt.parallel == "fsdp2":
            train_model.set_requires_gradient_sync(True)
        return nullcontext()
    if rt.parallel == "ddp":
        return train_model.no_sync()
    return _fsdp_no_sync(train_model)


@contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def full_model_state(model, rt: Runtime) -> dict | None:
    """The whole model's state dict on rank 0 (CPU tensors) under fsdp2, gathered collectively;
    None otherwise (the plain module saves itself). Every rank must call it."""
    if rt.parallel != "fsdp2":
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True))
    if not rt.is_main:
        return None
    # tied weights (lm_head = embed_tokens) once, under the first name, as `save_pretrained` writes them
    kept = {n for n, _ in model.named_parameters()}
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - kept
    return {k: v for k, v in sd.items() if k not in aliases}


def optimizer_state(model, opt, rt: Runtime) -> tuple[dict | None, str]:
    """(state, format) to checkpoint: the optimizer's own state dict (``index``: identical on every
    rank without sharding), or under fsdp2 the full, parameter-name keyed state gathered to rank 0
    (``fqn``; None on other ranks). Every rank must call it."""
    if rt.parallel != "fsdp2":
        return opt.state_dict(), "index"
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, opt, options=_options(full_state_dict=True, cpu_offload=True))
    return (sd if rt.is_main else None), "fqn"


def _index_to_fqn(model, opt, state: dict) -> dict:
    """An ``index`` optimizer state (a plain AdamW over the trainable parameters in module order)
    keyed by parameter names, the layout `set_optimizer_state_dict` reads."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    groups, out_state = [], {}
    for g in state["param_groups"]:
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]})
    for i, s in state["state"].items():
        out_state[names[int(i)]] = s
    return {"state": out_state, "param_groups": groups}


def load_optimizer_state(model, opt, rt: Runtime, state: dict, fmt: str = "index") -> None:
    """Load a checkpoint's optimizer state saved by `optimizer_state` under any ``parallel``."""
    if rt.parallel != "fsdp2" and fmt == "index":
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if fmt == "index":
        state = _index_to_fqn(model, opt, state)
    set_optimizer_state_dict(model, opt, state, options=_options(full_state_dict=True))
