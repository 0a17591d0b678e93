"""Which stages are wired to the runtime seam, and the refusal for those that are not yet.

Every stage config has a ``runtime`` section (so ``--runtime.*`` parses and is listed everywhere).
The training stages in `WIRED` take every runtime option; the inference stages in `ONE_PROCESS` take
the device and the dtype (`place_for_inference`) and run as one process. The others still run
as one CPU process in fp32; for them any non-default runtime option is a `ConfigError` naming the
stage and the option, instead of an option that is silently ignored. `check_runtime` is called by
the CLI for every stage and by `posttrain.runs.prepare_run` for every trainer built from Python.
Torch-free (the CLI calls it before importing a trainer).
"""
from __future__ import annotations

from posttrain.config import ConfigError

WIRED = frozenset({"sft", "rm", "dpo", "prm", "rl"})  # stages that honour runtime.device / dtype / parallel
ONE_PROCESS = frozenset({"eval", "search", "demo"})  # stages that honour runtime.device / dtype, in one process


def place_for_inference(cfg, *models):
    """(runtime, models) for a one-process inference stage (`ONE_PROCESS`): each model on the device
    (fp32 head under bf16), in eval mode. Its generation runs under ``runtime.autocast()``."""
    from posttrain.runtime.device import init_runtime
    from posttrain.runtime.parallel import keep_fp32, output_head

    rt = init_runtime(cfg.runtime)
    placed = []
    for m in models:
        if m is not None:
            m.to(rt.device).eval()
            if rt.compute_dtype != rt.param_dtype:
                keep_fp32(output_head(m))
        placed.append(m)
    return rt, placed


def check_runtime(cfg, stage: str) -> None:
    """Refuse runtime options that `stage` cannot honour yet (see the module docstring)."""
    rt = getattr(cfg, "runtime", None)
    if rt is None or stage in WIRED:
        return
    if stage in ONE_PROCESS:
        if rt.parallel != "none":
            raise ConfigError(f"posttrain {stage} runs as one process: runtime.parallel={rt.parallel} is not supported "
                              "(drop it; --runtime.device and --runtime.dtype apply)")
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
