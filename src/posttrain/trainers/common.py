"""Pieces every trainer shares: component configs, model set-up (LoRA), optimizer and schedule,
the resumable data order, and generation-based exact-match evaluation.

Trainers on the runtime seam (`posttrain.runtime`) start with `start_run`: the `Runtime` first,
then the run folder prepared by rank 0 alone (its errors reach every rank). Their model, optimizer
and schedule live in a `posttrain.runtime.worker.PolicyWorker` (the one optimizer-step path). Ranks
other than 0 log nothing (`NullLogger`) and show no progress; every rank runs `training_loop` and
saves collectively (rank 0 writes).
"""
from __future__ import annotations

import json
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from posttrain.config import ConfigError
from posttrain.data import encode_prompt
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.configs import DataConfig, ModelConfig, OptimConfig, TrainConfig  # noqa: F401  (re-exported)
from posttrain.runtime.worker import apply_lora, build_optimizer  # noqa: F401  (re-exported)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


IN_MEMORY = "python:"  # data.path / data.eval_path of rows a trainer was given from Python


def is_in_memory(source) -> bool:
    """True for rows held in memory (a list or tuple of dicts, a `datasets.Dataset`), not a path."""
    return source is not None and not isinstance(source, (str, bytes)) and not hasattr(source, "__fspath__")


def bind_inputs(cfg, model=None, train_data=None, eval_data=None):
    """Fold what a trainer was given from Python into its config: ``(cfg, model, train, eval)``.

    - `model` as a string (a name such as ``tiny-llama:d=32,l=2,h=2``, a folder, a run folder) sets
      ``cfg.model.name`` and is loaded by the trainer (the returned model is None); a module is kept.
    - `train_data` / `eval_data` as a path (or ``task:NAME``) set ``data.path`` / ``data.eval_path``,
      exactly as ``--data`` / ``--data.eval_path`` do. Rows in memory (a list of dicts or a
      ``datasets.Dataset``) are returned as `train` / `eval` for `load_split` / `load_pairs`, and the
      config records ``python:train_data`` / ``python:eval_data`` in their place, so the saved
      ``config.yaml`` stays YAML and a CLI ``--resume`` of the run asks for the rows instead of
      silently training on the default data. In-memory training rows are used whole: the held-out
      set is `eval_data` (or ``data.eval_path``), never a slice of them.
    """
    import dataclasses

    data, changes = cfg.data, {}
    train_rows = eval_rows = None
    if train_data is not None:
        if is_in_memory(train_data):
            train_rows, changes["path"] = train_data, f"{IN_MEMORY}train_data"
        else:
            changes["path"] = str(train_data)
    if eval_data is not None:
        if is_in_memory(eval_data):
            eval_rows, changes["eval_path"] = eval_data, f"{IN_MEMORY}eval_data"
        else:
            changes["eval_path"] = str(eval_data)
    if changes:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(data, **changes))
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=str(model)))
        model = None
    return cfg, model, train_rows, eval_rows


def _missing_rows(path: str) -> ConfigError:
    which = "eval_data" if path.endswith("eval_data") else "train_data"
    return ConfigError(f"data path '{path}' stands for rows passed from Python; pass them again "
                       f"({which}=... to the trainer), or give a file with --data / --data.eval_path")


def read_split(data_cfg: DataConfig, split: str, kind: str | None = None, source=None):
    """(examples, task, report) for `split` ('sft' | 'sft_eval' | 'rl' | 'eval'); see `load_split`.

    `report` is the `LoadReport` of file or in-memory data (None for task data, or no data)."""
    from posttrain.data import load_examples
    from posttrain.tasks import load_task_spec

    kind = kind or data_cfg.kind or None
    evaluating = split in ("eval", "sft_eval")
    path = data_cfg.eval_path if evaluating else data_cfg.path
    limit = data_cfg.eval_rows if evaluating else data_cfg.train_rows
    if source is not None:  # rows from Python (train_data= / eval_data=)
        name = "eval_data" if evaluating else "train_data"
        examples, report = load_examples(source, kind=kind, columns=data_cfg.columns, on_error=data_cfg.on_error,
                                         limit=limit, name=name)
        return examples, None, report
    if data_cfg.path.startswith("task:"):
        task = load_task_spec(data_cfg.path[len("task:"):])
        if evaluating and data_cfg.eval_path and not data_cfg.eval_path.startswith("task:"):
            if data_cfg.eval_path.startswith(IN_MEMORY):
                raise _missing_rows(data_cfg.eval_path)
            examples, report = load_examples(data_cfg.eval_path, kind=kind, columns=data_cfg.columns,
                                             on_error=data_cfg.on_error, limit=limit)
            return examples, task, report
        if limit == 0:  # data.eval_rows 0: no held-out evaluation
            return [], task, None
        if split == "sft_eval":
            rows = task.sft_rows(limit, seed=2, held_out=True)
        else:
            rows = {"sft": task.sft_rows, "rl": task.rl_rows, "eval": task.eval_rows}[split](limit)
        examples, _ = load_examples(rows, kind="verifiable" if split in ("rl", "eval") else kind)
        return examples, task, None
    if not path:
        return [], None, None
    if path.startswith(IN_MEMORY):
        raise _missing_rows(path)
    examples, report = load_examples(path, kind=kind, columns=data_cfg.columns, on_error=data_cfg.on_error, limit=limit)
    return examples, None, report


def load_split(data_cfg: DataConfig, split: str, kind: str | None = None, source=None):
    """Examples for `split` ('sft' | 'sft_eval' | 'rl' | 'eval') and the task (None for file data).

    `source`: rows from Python (a list of dicts or a `datasets.Dataset`, see `bind_inputs`), read
    instead of the config's path; errors name them ``train_data[i]`` / ``eval_data[i]``. Otherwise
    `task:NAME[:k=v]` generates rows with the built-in task and anything else is read from
    ``data.path`` (training splits) or ``data.eval_path`` (held-out splits).
    """
    examples, task, report = read_split(data_cfg, split, kind, source)
    if report is not None:
        print_report(report)
    return examples, task


def print_report(report) -> None:
    """The data summary line and the first skipped rows' reasons."""
    from posttrain.logging import console

    console.print(f"data: {report.summary()}")
    for msg in report.first_errors:
        console.print(f"  skipped: {msg}")


def start_run(cfg, stage: str, models: tuple[str, ...] = ()):
    """(runtime, checkpoint to resume from): `init_runtime(cfg.runtime)`, then `prepare_run` on rank 0
    only (a refused folder is an error on every rank, none waits for it), with the runtime options
    checked for `stage` (`posttrain.runtime.support`)."""
    from posttrain.runs import prepare_run
    from posttrain.runtime.device import init_runtime

    rt = init_runtime(cfg.runtime)
    return rt, rt.on_main(lambda: prepare_run(cfg, stage, models))


class NullLogger:
    """The metrics logger of ranks other than 0: logs nothing."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def check_global_batch(rt, key: str, size: int) -> None:
    """A step's global batch must split evenly across the ranks (equal micro-batch counts per rank)."""
    if rt.world_size > 1 and size % rt.world_size:
        raise ConfigError(f"{key}={size} does not split evenly across {rt.world_size} ranks (runtime.parallel={rt.parallel}); "
                          f"use a multiple of {rt.world_size}")


def sharded_dir(rt, run_dir: Path, step: int) -> Path | None:
    """Under FSDP2, an empty folder beside the checkpoints for every rank's optimizer shards (moved
    into the checkpoint by rank 0 when it is written); None otherwise. Collective."""
    if rt.parallel != "fsdp2":
        return None
    folder = Path(run_dir) / "checkpoints" / f".sharded-step-{step:07d}"

    def fresh():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    rt.on_main(fresh)
    return folder


def save_run_checkpoint(trainer, keep: int, extra: dict | None = None) -> Path:
    """`save_checkpoint` for a trainer on the runtime seam (`trainer.rt`, `.worker`, `.model`, `.sched`,
    `.order`, `.step`, `.run_dir`, `.tokenizer`): gathers what the folder needs on every rank (an FSDP2
    model's full state, the optimizer state, each rank's RNG state), rank 0 writes, all wait."""
    from posttrain.checkpoint import save_checkpoint
    from posttrain.runtime.device import rng_state

    rt = trainer.rt
    shards = sharded_dir(rt, trainer.run_dir, trainer.step)
    model_state, opt_state, fmt = trainer.worker.checkpoint_state(shards)
    rngs = rt.gather_object(rng_state())
    path = trainer.run_dir / "checkpoints" / f"step-{trainer.step:07d}"
    if rt.is_main:
        state = {"optimizer": opt_state, "optimizer_format": fmt, "scheduler": trainer.sched.state_dict(),
                 "data": trainer.order.state(), "world_size": rt.world_size, "rng_per_rank": rngs, **(extra or {})}
        path = save_checkpoint(trainer.run_dir, trainer.step, trainer.model, trainer.tokenizer, state, keep, model_state=model_state,
                               move_in={"optimizer": shards} if fmt == "dcp" else None)
        if shards is not None:
            shutil.rmtree(shards, ignore_errors=True)  # left over when this step was already saved
    rt.barrier()
    return path


@contextmanager
def saved_on_interrupt(trainer, name: str, step_attr: str = "step"):
    """Ctrl-C during training saves a checkpoint of the last finished step, then re-raises (the CLI
    exits 130); `--resume` continues from it."""
    from posttrain.logging import console

    try:
        yield
    except KeyboardInterrupt:
        rt = getattr(trainer, "rt", None)
        if rt is not None and rt.distributed:  # a save is collective; ranks stopped at different points would wait forever
            if rt.is_main:
                console.print(f"{name}: interrupted at step {getattr(trainer, step_attr)}; a data-parallel run keeps its last periodic checkpoint")
            raise
        console.print(f"{name}: interrupted at step {getattr(trainer, step_attr)}; saving a checkpoint (Ctrl-C again to abandon it)")
        path = trainer.save()
        trainer.logger.close()
        console.print(f"{name}: saved {path}; continue with --resume")
        raise


def training_loop(trainer, train_cfg: TrainConfig, name: str, count_key: str, bar_fields, stop=None) -> dict:
    """The outer loop every offline trainer shares: `trainer.train_step()` until `max_steps`, with
    throughput (`<count_key>_per_s`), periodic eval, logging, periodic saves, the progress bar (or plain
    progress lines in a log: `posttrain.logging.ProgressBar`), and an
    optional early stop (`stop(metrics) -> reason or None`). Then the final eval (reused when the
    last step already evaluated) is logged. Returns the last step's metrics merged with the final eval.

    `trainer` provides `step`, `train_step()`, `evaluate()`, `save()` and `logger`."""
    from posttrain.logging import ProgressBar, console
    from posttrain.runtime.device import fail_point

    rt = getattr(trainer, "rt", None)
    main = rt is None or rt.is_main
    last: dict = {}
    t0, done = time.perf_counter(), 0
    bar = ProgressBar(train_cfg.max_steps, name, train_cfg.progress and main, start=trainer.step, every=train_cfg.log_every,
                      every_s=train_cfg.progress_every_s)
    with saved_on_interrupt(trainer, name), bar:
        while trainer.step < train_cfg.max_steps:
            if rt is not None:
                fail_point(rt, f"step-{trainer.step + 1}")
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
            bar.update(trainer.step, metrics=m, **bar_fields(m))
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
            if main:
                console.print(f"final eval: {json.dumps({k: round(v, 4) for k, v in final.items()})}")
    return {**last, **final}
