"""Metrics: always a jsonl file in the run folder; TensorBoard / W&B / MLflow when asked; a rich
progress bar with step, loss, tokens/s and ETA on a terminal, plain progress lines in a log."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True)


def warn(msg: str) -> None:
    console.print(f"[bold yellow]warning:[/] {msg}")


class MetricsLogger:
    def __init__(self, run_dir: Path, backends: tuple[str, ...] = (), config: dict | None = None, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._f = open(self.path, "a" if resume else "w")
        self._backends = []
        for name in backends:
            if name == "jsonl":
                continue
            self._backends.append(self._open_backend(name, config or {}))

    def _open_backend(self, name: str, config: dict):
        try:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                w = SummaryWriter(str(self.run_dir / "tensorboard"))
                return lambda m, s: [w.add_scalar(k, v, s) for k, v in m.items() if isinstance(v, (int, float))]
            if name == "wandb":
                import wandb

                wandb.init(project="posttrain", dir=str(self.run_dir), config=config)
                return lambda m, s: wandb.log(m, step=s)
            if name == "mlflow":
                import mlflow

                mlflow.start_run()
                return lambda m, s: mlflow.log_metrics({k: v for k, v in m.items() if isinstance(v, (int, float))}, step=s)
        except ImportError as e:
            raise RuntimeError(f"logger '{name}' needs its package: pip install 'posttrain[{name}]' ({e})") from None
        raise ValueError(f"unknown logger '{name}' (known: jsonl, tensorboard, wandb, mlflow)")

    def log(self, metrics: dict, step: int) -> None:
        clean = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v) for k, v in metrics.items()}
        self._f.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self._f.flush()
        for b in self._backends:
            b(clean, step)

    def close(self) -> None:
        self._f.close()


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds) + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


class ProgressBar:
    """Progress of a loop of `total` steps, for a person at a terminal or reading a log.

    - stderr is a terminal: a rich progress bar (step/total, the `info` fields, ETA) on stderr;
    - stdout is not a terminal (a log file, CI, ``> run.log``), or there is no bar: plain lines on
      stdout, such as ``sft step 40/300 (13%) | loss 1.234 | lr 0.001 | tok/s 5120 | eval/accuracy
      0.41 @30 | elapsed 0:00:12 | eta 0:01:18``. A line is printed at the first step, the last
      step, a step that evaluated, and every `every` steps that come at least `every_s` seconds
      after the previous line (the trainers pass ``train.log_every`` and ``train.progress_every_s``,
      30 s by default, as Hugging Face's Trainer logs every ``logging_steps``; 0 s: every
      `every` steps).

    `enabled=False` (``--train.progress false``) turns both off. `update(step, metrics=..., **info)`:
    `info` are the fields the bar shows (loss, reward, tok_s, ...); `metrics` (the step's full
    metrics) adds the learning rate and the latest ``eval/*`` value to the line.
    """

    def __init__(self, total: int, description: str, enabled: bool = True, start: int = 0, every: int = 1,
                 every_s: float = 30.0, stream=None):
        self.enabled = enabled and sys.stderr.isatty()
        self._p = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console, disable=not self.enabled,
        )
        self._task = self._p.add_task(description, total=total, completed=start, info="")
        self._stream = stream if stream is not None else sys.stdout
        is_tty = getattr(self._stream, "isatty", lambda: False)()
        self.lines = enabled and (not self.enabled or not is_tty)
        self.total, self.description, self.start = total, description, start
        self.every, self.every_s = max(1, int(every)), max(0.0, float(every_s))
        self._t0 = time.perf_counter()
        self._last_line: float | None = None
        self._eval: tuple[str, float, int] | None = None  # latest (key, value, step)

    def __enter__(self):
        self._p.__enter__()
        return self

    def __exit__(self, *exc):
        self._p.__exit__(*exc)

    def update(self, step: int, metrics: dict | None = None, **info) -> None:
        """Move to `step`; `info` fields are shown on the bar and the line, `metrics` feed the line."""
        text = "  ".join(f"{k} {_fmt(v)}" for k, v in info.items())
        self._p.update(self._task, completed=step, info=text)
        if not self.lines:
            return
        evaluated = self._note_eval(metrics or {}, step)
        now = time.perf_counter()
        due = step % self.every == 0 and (self._last_line is None or now - self._last_line >= self.every_s)
        if self._last_line is None or step >= self.total or evaluated or due:
            self._last_line = now
            print(self.line(step, metrics or {}, info, now - self._t0), file=self._stream, flush=True)

    def _note_eval(self, metrics: dict, step: int) -> bool:
        evals = [(k, v) for k, v in metrics.items() if k.startswith("eval/") and isinstance(v, (int, float))]
        if not evals:
            return False
        key, value = next(((k, v) for k, v in evals if k.endswith(("/accuracy", "pass@1"))), evals[0])
        self._eval = (key, float(value), step)
        return True

    def line(self, step: int, metrics: dict, info: dict, elapsed: float) -> str:
        """The plain progress line at `step` (see the class docstring)."""
        parts = [f"{self.description} step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)"]
        parts += [f"{k.replace('_s', '/s') if k.endswith('_s') else k} {_fmt(v)}" for k, v in info.items()]
        if "lr" in metrics and "lr" not in info:
            parts.append(f"lr {metrics['lr']:.3g}")
        done = step - self.start
        if done > 0 and elapsed > 0:
            parts.append(f"steps/s {done / elapsed:.3g}")
        if self._eval is not None:
            key, value, at = self._eval
            parts.append(f"{key} {_fmt(value)} @{at}")
        parts.append(f"elapsed {_clock(elapsed)}")
        if 0 < done and step < self.total:
            parts.append(f"eta {_clock(elapsed / done * (self.total - step))}")
        return " | ".join(parts)
