"""Metrics: always a jsonl file in the run folder; TensorBoard / W&B / MLflow when asked; a rich
progress bar with step, loss, tokens/s and ETA."""
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


class ProgressBar:
    def __init__(self, total: int, description: str, enabled: bool = True, start: int = 0):
        self.enabled = enabled and sys.stderr.isatty()
        self._p = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console, disable=not self.enabled,
        )
        self._task = self._p.add_task(description, total=total, completed=start, info="")

    def __enter__(self):
        self._p.__enter__()
        return self

    def __exit__(self, *exc):
        self._p.__exit__(*exc)

    def update(self, step: int, **info) -> None:
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) and math.isfinite(v) else f"{k} {v}" for k, v in info.items())
        self._p.update(self._task, completed=step, info=text)
