"""Pieces every trainer shares: component configs, model set-up (LoRA), optimizer and schedule,
the resumable data order, and generation-based exact-match evaluation."""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from posttrain.config import ConfigError
from posttrain.data import encode_prompt
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.configs import DataConfig, ModelConfig, OptimConfig, TrainConfig  # noqa: F401  (re-exported)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def apply_lora(model, cfg: ModelConfig):
    if cfg.lora_rank <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    targets = [t for t in cfg.lora_targets if any(n.endswith(t) for n, _ in model.named_modules())]
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def build_optimizer(model, cfg: OptimConfig, max_steps: int):
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


class DataOrder:
    """Shuffled passes over n items; the position (epoch, offset) is the whole resumable state."""

    def __init__(self, n: int, seed: int, epoch: int = 0, offset: int = 0):
        self.n, self.seed, self.epoch, self.offset = n, seed, epoch, offset
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation()
            step = min(k - len(out), self.n - self.offset)
            out += self._perm[self.offset : self.offset + step]
            self.offset += step
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}


def exact_match_eval(
    model, tokenizer, rows: list, verify: Callable[[str, str], bool], max_new_tokens: int = 32,
    sequences_per_batch: int = 128,
) -> dict:
    """Greedy generation on `rows` (Examples with prompt and answer); share verified correct."""
    engine = HFEngine(model, tokenizer, sequences_per_batch=sequences_per_batch)
    prompts = [encode_prompt(tokenizer, ex.prompt) for ex in rows]
    outs = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    texts = [o[0].text for o in outs]
    correct = [bool(verify(t, ex.answer)) for t, ex in zip(texts, rows)]
    return {
        "accuracy": sum(correct) / max(1, len(correct)),
        "mean_completion_tokens": sum(len(o[0].token_ids) for o in outs) / max(1, len(outs)),
        "samples": [(ex.prompt, t, ex.answer, c) for ex, t, c in list(zip(rows, texts, correct))[:5]],
    }


def default_verifier(task=None) -> Callable[[str, str], bool]:
    if task is not None:
        return task.verify
    from posttrain.rewards.math import answers_match, extract_answer

    def verify(text: str, answer: str) -> bool:
        pred = extract_answer(text)
        return pred is not None and answers_match(pred, answer)

    return verify


def load_split(data_cfg: DataConfig, split: str, kind: str | None = None):
    """Examples for `split` ('sft' | 'sft_eval' | 'rl' | 'eval') and the task (None for file data).

    `task:NAME[:k=v]` generates rows with the built-in task; anything else is read from a path.
    """
    from posttrain.data import load_examples
    from posttrain.logging import console
    from posttrain.tasks import load_task_spec

    kind = kind or data_cfg.kind or None
    if data_cfg.path.startswith("task:"):
        task = load_task_spec(data_cfg.path[len("task:"):])
        evaluating = split in ("eval", "sft_eval")
        n = data_cfg.eval_rows if evaluating else data_cfg.train_rows
        if n == 0:  # data.eval_rows 0: no held-out evaluation
            return [], task
        if split == "sft_eval":
            rows = task.sft_rows(n, seed=2, held_out=True)
        else:
            rows = {"sft": task.sft_rows, "rl": task.rl_rows, "eval": task.eval_rows}[split](n)
        examples, _ = load_examples(rows, kind="verifiable" if split in ("rl", "eval") else kind)
        return examples, task
    evaluating = split in ("eval", "sft_eval")
    path = data_cfg.eval_path if evaluating else data_cfg.path
    if not path:
        return [], None
    limit = data_cfg.eval_rows if evaluating else data_cfg.train_rows
    examples, report = load_examples(path, kind=kind, columns=data_cfg.columns, on_error=data_cfg.on_error, limit=limit)
    console.print(f"data: {report.summary()}")
    for msg in report.first_errors:
        console.print(f"  skipped: {msg}")
    return examples, None


def optimizer_step(model, opt, sched, max_grad_norm: float, step: int, loss: float) -> tuple[float, float]:
    """Clip, refuse a non-finite gradient (naming the step and loss), step the optimizer and the
    schedule, clear gradients. Returns (grad norm before clipping, learning rate used)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if not torch.isfinite(grad_norm):
        raise FloatingPointError(f"step {step + 1}: gradient norm is {grad_norm} (loss {loss})")
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(grad_norm), lr


@contextmanager
def saved_on_interrupt(trainer, name: str, step_attr: str = "step"):
    """Ctrl-C during training saves a checkpoint of the last finished step, then re-raises (the CLI
    exits 130); `--resume` continues from it."""
    from posttrain.logging import console

    try:
        yield
    except KeyboardInterrupt:
        console.print(f"{name}: interrupted at step {getattr(trainer, step_attr)}; saving a checkpoint (Ctrl-C again to abandon it)")
        path = trainer.save()
        trainer.logger.close()
        console.print(f"{name}: saved {path}; continue with --resume")
        raise


def training_loop(trainer, train_cfg: TrainConfig, name: str, count_key: str, bar_fields, stop=None) -> dict:
    """The outer loop every offline trainer shares: `trainer.train_step()` until `max_steps`, with
    throughput (`<count_key>_per_s`), periodic eval, logging, periodic saves, the progress bar, and an
    optional early stop (`stop(metrics) -> reason or None`). Then the final eval (reused when the
    last step already evaluated) is logged. Returns the last step's metrics merged with the final eval.

    `trainer` provides `step`, `train_step()`, `evaluate()`, `save()` and `logger`."""
    from posttrain.logging import ProgressBar, console

    last: dict = {}
    t0, done = time.perf_counter(), 0
    with saved_on_interrupt(trainer, name), ProgressBar(train_cfg.max_steps, name, train_cfg.progress, start=trainer.step) as bar:
        while trainer.step < train_cfg.max_steps:
            m = trainer.train_step()
            done += m[count_key]
            m[f"{count_key}_per_s"] = done / (time.perf_counter() - t0)
            if train_cfg.eval_every and trainer.step % train_cfg.eval_every == 0 and trainer.step < train_cfg.max_steps:
                m.update(trainer.evaluate())
            evaluated = any(k.startswith("eval/") for k in m)
            if trainer.step % train_cfg.log_every == 0 or evaluated:
                trainer.logger.log(m, trainer.step)
            if train_cfg.save_every and trainer.step % train_cfg.save_every == 0:
                trainer.save()
            bar.update(trainer.step, **bar_fields(m))
            last = m
            reason = stop(m) if stop is not None else None
            if reason:
                console.print(f"{name}: stopping at step {trainer.step}: {reason}")
                break
    if any(k.startswith("eval/") for k in last):
        final = {k: v for k, v in last.items() if k.startswith("eval/")}
    else:
        final = trainer.evaluate()
        if final:
            trainer.logger.log(final, trainer.step)
            console.print(f"final eval: {json.dumps({k: round(v, 4) for k, v in final.items()})}")
    return {**last, **final}
