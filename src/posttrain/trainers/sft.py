"""Supervised fine-tuning: completion-only loss, padding-free packing, exact gradient accumulation.

One step takes `sequences_per_step` examples in a seeded, resumable order, splits them into
micro-batches of `sequences_per_microbatch`, packs each micro-batch into rows of at most
`tokens_per_row` tokens, and normalizes every micro-batch's summed NLL by the token count of the
whole step — so 1x8, 2x4 and 8x1 splits give the same update, and packed equals unpacked.

Runtime (`posttrain.runtime`, section ``runtime``): the model and every batch live on
``runtime.device``; ``runtime.dtype bf16`` runs forward passes under bf16 autocast with fp32 master
weights, AdamW state and logits. Under torchrun with ``runtime.parallel ddp|fsdp2`` every rank draws
the same global batch of ``sft.sequences_per_step`` examples (same seeded order) and trains on its
contiguous 1/N share, split into micro-batches of ``sft.sequences_per_microbatch``; the loss
normalizer is the global batch's loss-token count (each rank's count, all-reduced), so N ranks x B/N
examples give the update of 1 x B. Rank 0 writes metrics, config and checkpoints; every rank loads
on resume and keeps its own RNG state in the checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from posttrain.config import ConfigError
from posttrain.checkpoint import restore_checkpoint
from posttrain.data import TokenizedExample, check_sft_examples, pack_rows, packed_batch, pad_batch, tokenize_sft_examples
from posttrain.logging import MetricsLogger, console, warn
from posttrain.losses.sft import sft_loss
from posttrain.models import load_model_and_tokenizer
from posttrain.ops import aggregate, token_logprobs
from posttrain.ops.linear_nll import linear_nll_sum
from posttrain.ops.unpadded import supports_unpadded, unpadded_forward, unpadded_layout
from posttrain.configs import SFTConfig, SFTOptions  # noqa: F401  (re-exported)
from posttrain.runtime.device import Runtime
from posttrain.runtime.worker import PolicyWorker
from posttrain.trainers.common import (
    DataOrder, NullLogger, bind_inputs, check_global_batch, default_verifier, exact_match_eval, load_split,
    save_run_checkpoint, seed_everything, start_run, training_loop,
)

_CPU = Runtime()


def microbatch_loss(model, batch, num_loss_tokens: int, rt: Runtime = _CPU) -> tuple[torch.Tensor, float]:
    """Summed NLL of `batch` divided by the step's token count (so micro-batches add up exactly);
    the forward runs under the runtime's autocast, the log-probabilities in fp32.

    When the model exposes its decoder and a plain linear LM head (and is not wrapped for DDP /
    FSDP2, whose own forward must run), the decoder runs on every position but the head only at the
    trained positions (labels != -100: completion tokens, no prompt or padding), through the fused
    chunked `linear_nll_sum` (no (tokens x vocab) logits tensor, no logits gradient tensor). Otherwise
    the full model forward and `token_logprobs` over every position, as before. Both give the same
    loss and gradients to float rounding (tests/trainers/test_sft_fused_loss.py)."""
    mask = batch.labels != -100
    parts = _decoder_and_head(model, rt)
    if parts is None:
        with rt.autocast():
            logits = model(**batch.model_inputs()).logits
        nll, _ = sft_loss(token_logprobs(logits.float(), batch.labels), mask)
        return aggregate(nll, mask, "token-mean", num_tokens=num_loss_tokens), float(nll.detach().sum())
    decoder, head = parts
    layout = _unpadded_layout(decoder, batch)
    with rt.autocast():
        if layout is None:
            hidden = decoder(**batch.model_inputs()).last_hidden_state
            picked, labels = hidden[mask], batch.labels[mask]  # (N, d): the trained positions only
        else:  # every kept token once, no pad positions (posttrain.ops.unpadded)
            hidden = unpadded_forward(decoder, batch.input_ids.flatten()[layout.index],
                                      batch.position_ids.flatten()[layout.index], layout.segments)
            labels = batch.labels.flatten()[layout.index]
            picked, labels = hidden[labels != -100], labels[labels != -100]
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else head.weight.dtype
    nll_sum = linear_nll_sum(picked, head.weight, labels, head.bias, chunk_rows=_HEAD_CHUNK_ROWS, compute_dtype=dtype)
    return nll_sum / num_loss_tokens, float(nll_sum.detach())


def _unpadded_layout(decoder, batch):
    """The padding-free layout of `batch` (`posttrain.ops.unpadded`) when the decoder supports it and
    it drops at least `_MIN_PAD_SHARE` of the positions; else None (the decoder's own forward)."""
    if not supports_unpadded(decoder):
        return None
    layout = unpadded_layout(batch.input_ids, batch.position_ids, batch.attention_mask, batch.labels)
    if layout is None or layout.padded - layout.index.numel() < _MIN_PAD_SHARE * layout.padded:
        return None
    return layout


_MIN_PAD_SHARE = 0.05  # below this, padding costs less than the per-segment attention calls of the unpadded forward
_HEAD_CHUNK_ROWS = 256  # rows of fp32 logits live at once in the fused head + NLL (256 x 49152 x 4 B = 50 MB)
# final-logit transforms a causal LM's forward applies after its head; a model with one keeps the full forward
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _decoder_and_head(model, rt: Runtime):
    """(decoder, lm_head) when the loss may run the head itself: a model not wrapped for data
    parallelism, exposing ``get_decoder()`` and a plain ``nn.Linear`` output embedding (a LoRA- or
    otherwise wrapped head keeps the full forward), with no logit transform after the head."""
    if rt.parallel != "none":
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or decoder is base or type(head) is not torch.nn.Linear or head._forward_hooks or head._forward_pre_hooks:
        return None
    cfg = getattr(base, "config", None)
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        return None
    return decoder, head


def make_batches(examples: list[TokenizedExample], opts: SFTOptions, pad_id: int, device=None):
    size = opts.sequences_per_microbatch
    for i in range(0, len(examples), size):
        chunk = examples[i : i + size]
        b = packed_batch(pack_rows(chunk, opts.tokens_per_row), pad_id) if opts.pack else pad_batch(chunk, pad_id)
        yield b if device is None or device.type == "cpu" else _to(b, device)


def _to(batch, device):
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device, non_blocking=True)
                                         for f in dataclasses.fields(batch) if isinstance(getattr(batch, f.name), torch.Tensor)})


def reference_answer(completion) -> str | None:
    """The final answer written in a reference completion (e.g. GSM8K's `#### 42`), if any."""
    from posttrain.rewards.math import extract_answer

    text = completion if isinstance(completion, str) else completion[-1]["content"]
    return extract_answer(text)


class SFTTrainer:
    """Supervised fine-tuning (see the module docstring): completion-only loss, packing, LoRA.

    `cfg` holds every option (`SFTConfig`; the CLI builds the same object from YAML and flags).
    `model`: a name or folder (``"tiny-llama:d=32,l=2,h=2"``, ``"runs/sft"``, a Hugging Face folder),
    or a causal LM module given with its `tokenizer`; None loads ``cfg.model.name``.
    `train_data` / `eval_data`: a path (or ``task:NAME``), a list of dicts, or a ``datasets.Dataset``
    of language-modeling (``text`` / ``messages``) or prompt-completion rows; they replace
    ``cfg.data.path`` / ``cfg.data.eval_path`` (see `posttrain.trainers.common.bind_inputs`). A bad row
    raises `DataError` naming it (``train_data[3]: field 'completion': ...``) before any model loads.
    Held-out rows with an ``answer`` (or a ``#### 42`` answer in the completion) are also scored by
    greedy exact match. The run folder is ``cfg.train.out``.
    """

    def __init__(self, cfg: SFTConfig, model=None, tokenizer=None, *, train_data=None, eval_data=None):
        cfg, model, train_rows, eval_rows = bind_inputs(cfg, model, train_data, eval_data)
        self.cfg = cfg
        self.rt, self.resume_from = start_run(cfg, "sft", (cfg.model.name,))
        check_global_batch(self.rt, "sft.sequences_per_step", cfg.sft.sequences_per_step)
        seed_everything(cfg.train.seed)
        # the data first: a bad row is reported before any model is loaded
        train, self.task = load_split(cfg.data, "sft", source=train_rows)
        train, n_empty, why = check_sft_examples(train, cfg.data.on_error)  # rows with nothing to learn: error or counted skip
        self.eval_examples, _ = load_split(cfg.data, "sft_eval", source=eval_rows)
        if model is None:
            model, tokenizer = load_model_and_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code, seed=cfg.train.seed)
        self.tokenizer = tokenizer
        self.train_examples, n_long, why_long = tokenize_sft_examples(tokenizer, train, cfg.data.max_length, cfg.data.on_error)
        if n_empty or n_long:
            warn(f"sft: skipped {n_empty} rows with nothing to train on and {n_long} whose prompt fills data.max_length={cfg.data.max_length}")
            for msg in why + why_long:
                console.print(f"  skipped: {msg}")
        truncated = sum(e.truncated for e in self.train_examples)
        if truncated:
            warn(f"{truncated}/{len(self.train_examples)} examples truncated to data.max_length={cfg.data.max_length}")
        longest = max(len(e) for e in self.train_examples)
        if cfg.sft.tokens_per_row == 0:
            self.cfg = cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, tokens_per_row=longest))
        elif cfg.sft.pack and longest > cfg.sft.tokens_per_row:
            raise ConfigError(f"sft.tokens_per_row={cfg.sft.tokens_per_row} is shorter than the longest example ({longest}); raise it or lower data.max_length")
        self.eval_tokenized, n_long_eval, _ = tokenize_sft_examples(
            tokenizer, [ex for ex in self.eval_examples if ex.completion], cfg.data.max_length, "skip")
        if n_long_eval:
            warn(f"sft: {n_long_eval} held-out rows left out of the eval loss (prompt fills data.max_length={cfg.data.max_length})")
        for ex in self.eval_examples:  # a reference answer from the completion when no column gives one
            if ex.answer is None and ex.completion is not None:
                ex.answer = reference_answer(ex.completion)
        self.answered = [ex for ex in self.eval_examples if ex.answer is not None and ex.prompt is not None]
        self.verify = default_verifier(self.task) if self.answered else None
        self.run_dir = Path(cfg.train.out)
        # LoRA, placement, optimizer; on resume the weights load before the model is wrapped / sharded
        self.worker = PolicyWorker(model, self.rt, cfg.model, cfg.optim, cfg.train.max_steps,
                                   resume_dir=self.run_dir if cfg.train.resume else None)
        self.model, self.train_model = self.worker.model, self.worker.train_model
        self.opt, self.sched = self.worker.opt, self.worker.sched
        self.order = DataOrder(len(self.train_examples), cfg.train.seed)
        self.step = 0
        if cfg.train.resume:
            self._resume()
        self.logger = (MetricsLogger(self.run_dir, cfg.train.loggers, dataclasses.asdict(cfg), resume=cfg.train.resume)
                       if self.rt.is_main else NullLogger())

    def describe(self) -> dict:
        """The run's derived sizes: parameters, examples, tokens, micro-batches per step, epochs."""
        c = self.cfg
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        tokens = sum(len(e) for e in self.train_examples)
        return {
            "parameters": n_params, "trainable_parameters": n_train, "train_examples": len(self.train_examples),
            "train_tokens": tokens, "eval_examples": len(self.eval_examples),
            "microbatches_per_step": -(-c.sft.sequences_per_step // c.sft.sequences_per_microbatch),
            "epochs": c.train.max_steps * c.sft.sequences_per_step / max(1, len(self.train_examples)),
        }

    def _resume(self) -> None:
        rt = self.rt
        st = restore_checkpoint(self.run_dir, self.model, self.opt, self.sched, self.cfg.optim.lr, weights=False,
                                load_optimizer=self.worker.load_optimizer,
                                rank=rt.rank, world_size=rt.world_size, verbose=rt.is_main)
        if st is not None:
            self.order = DataOrder(len(self.train_examples), self.cfg.train.seed, **st["data"])
            self.step = st["step"]

    def save(self) -> Path:
        """Checkpoint the current step into ``out/checkpoints/step-NNNNNNN`` (model or LoRA adapter,
        tokenizer, optimizer, schedule, data position); returns its folder. Collective under data
        parallelism: every rank calls it, rank 0 writes."""
        return save_run_checkpoint(self, self.cfg.train.keep_checkpoints)

    def train_step(self) -> dict:
        """One optimizer step over ``sft.sequences_per_step`` examples (this rank's share of them under
        data parallelism); returns its metrics over the global batch (loss, grad_norm, lr, tokens, loss_tokens)."""
        c, rt = self.cfg, self.rt
        batch = rt.shard([self.train_examples[i] for i in self.order.take(c.sft.sequences_per_step)])
        n_loss = int(rt.all_reduce_sum(sum(sum(e.loss_mask[1:]) for e in batch)))  # the global normalizer
        self.model.train()
        total = 0.0
        mbs = list(make_batches(batch, c.sft, self.tokenizer.pad_token_id, rt.device))
        for k, mb in enumerate(mbs):
            with self.worker.accumulate(last=k == len(mbs) - 1):
                loss, nll_sum = microbatch_loss(self.train_model, mb, n_loss, rt)
                self.worker.backward(loss)
            total += nll_sum
        total = rt.all_reduce_sum(total)
        grad_norm, lr = self.worker.step(self.step, total / n_loss, c.optim.max_grad_norm)
        self.step += 1
        return {"loss": total / n_loss, "grad_norm": grad_norm, "lr": lr,
                "tokens": int(rt.all_reduce_sum(sum(len(e) for e in batch))), "loss_tokens": n_loss}

    @torch.no_grad()
    def eval_loss(self) -> float | None:
        """Mean completion-token NLL on the held-out rows (None without held-out rows)."""
        if not self.eval_tokenized:
            return None
        self.model.eval()
        n = sum(sum(e.loss_mask[1:]) for e in self.eval_tokenized)
        batches = make_batches(self.eval_tokenized, self.cfg.sft, self.tokenizer.pad_token_id, self.rt.device)
        total = sum(microbatch_loss(self.model, mb, n, self.rt)[1] for mb in batches)
        return total / n

    def evaluate(self) -> dict:
        """Held-out metrics: ``eval/loss`` and, for rows with a reference answer, greedy
        ``eval/accuracy`` and ``eval/mean_completion_tokens``; empty without held-out rows."""
        out = {}
        loss = self.eval_loss()
        if loss is not None:
            out["eval/loss"] = loss
        if self.verify is not None:
            with self.rt.autocast():
                res = exact_match_eval(self.model, self.tokenizer, self.answered, self.verify, self.cfg.sft.eval_max_new_tokens)
            for prompt, text, answer, ok in res.pop("samples")[:2] if self.rt.is_main else ():
                console.print(f"  eval sample: {json.dumps(prompt)[:80]} -> {text!r} (answer {answer}, {'ok' if ok else 'wrong'})")
            out.update({f"eval/{k}": v for k, v in res.items()})
        return out

    def train(self) -> dict:
        """Train to ``train.max_steps`` (or ``sft.target_accuracy``), evaluate, save the final
        checkpoint; returns the last step's metrics, the final eval and ``checkpoint`` (its folder)."""
        c = self.cfg
        if self.rt.is_main:
            console.print(f"sft config: {json.dumps(dataclasses.asdict(c), default=str)}")
            console.print(f"sft sizes: {json.dumps(self.describe())}")
        target = c.sft.target_accuracy

        def reached(m: dict) -> str | None:
            acc = m.get("eval/accuracy")
            return f"held-out accuracy {acc:.3f} >= sft.target_accuracy" if target and acc is not None and acc >= target else None

        out = training_loop(self, c.train, "sft", "tokens", lambda m: {"loss": m["loss"], "tok_s": m["tokens_per_s"]}, reached)
        path = self.save()
        self.logger.close()
        return {**out, "checkpoint": str(path)}


HELP = "supervised fine-tuning (completion-only loss, packing, LoRA)"
CONFIG = SFTConfig


def run(cfg: SFTConfig) -> dict:
    return SFTTrainer(cfg).train()
