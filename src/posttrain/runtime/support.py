"""Which stages are wired to the runtime seam, and the refusal for those that are not yet.

Every stage config has a ``runtime`` section (so ``--runtime.*`` parses and is listed everywhere),
but only the stages in `WIRED` place their model through `posttrain.runtime`. The others still run
as one CPU process in fp32; for them any non-default runtime option is a `ConfigError` naming the
stage and the option, instead of an option that is silently ignored. `check_runtime` is called by
the CLI for every stage and by `posttrain.runs.prepare_run` for every trainer built from Python.
Torch-free (the CLI calls it before importing a trainer).
"""
from __future__ import annotations

from posttrain.config import ConfigError

WIRED = frozenset({"sft", "rm", "dpo", "prm", "rl"})  # stages that honour runtime.device / dtype / parallel


def check_runtime(cfg, stage: str) -> None:
    """Refuse runtime options that `stage` cannot honour yet (see the module docstring)."""
    rt = getattr(cfg, "runtime", None)
    if rt is None or stage in WIRED:
        return
    bad = []
    if rt.parallel != "none":
        bad.append(f"runtime.parallel={rt.parallel}")
    if rt.dtype != "fp32":
        bad.append(f"runtime.dtype={rt.dtype}")
    if rt.device not in ("auto", "cpu"):
        bad.append(f"runtime.device={rt.device}")
    if bad:
        wired = ", ".join(sorted(WIRED))
        raise ConfigError(f"posttrain {stage} does not run on the runtime seam yet ({wired} do): {', '.join(bad)} is not supported; "
                          "drop the option (this stage runs as one CPU process in fp32)")
