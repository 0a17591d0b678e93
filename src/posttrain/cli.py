"""posttrain command line: one entry point, one sub-command per stage.

    posttrain sft --config run.yaml --lr 1e-4 --model tiny-llama --data data.jsonl --out runs/x
    posttrain demo [--out DIR]

Every stage takes `--config FILE.yaml` and `--key value` overrides (dotted keys such as
`--optim.warmup_steps 10`, or the common aliases --model --data --out --max-steps --resume --lr --seed).
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable

from posttrain.config import ConfigError, load_config, parse_overrides
from posttrain.errors import UserError

STAGES: dict[str, tuple[str, Callable]] = {}


def stage(name: str, help: str):
    def deco(fn):
        STAGES[name] = (help, fn)
        return fn

    return deco


def _print_options(cfg_cls) -> None:
    from posttrain.config import describe_options

    print("options (also settable in --config YAML; --debug shows tracebacks):\n  --config FILE")
    print("\n".join(describe_options(cfg_cls)))


def _run_config_stage(cfg_cls, runner, args: list[str], name: str = ""):
    if args and args[0] in ("-h", "--help"):
        _print_options(cfg_cls)
        return 0
    overrides = parse_overrides(args)
    yaml_path = overrides.pop("config", None)
    cfg = load_config(cfg_cls, yaml_path, overrides)
    train = getattr(cfg, "train", None)
    if getattr(train, "resume", False) and hasattr(train, "overwrite"):
        from posttrain.runs import saved_config

        saved = saved_config(cfg_cls, train.out)
        if saved is not None:  # resume from the run's own options; only what is given here changes them
            cfg = load_config(cfg_cls, yaml_path, overrides, base=saved)
    if name:
        from posttrain.runtime.support import check_runtime

        check_runtime(cfg, name)
    return runner(cfg)


@stage("demo", "the whole story on a tiny model: SFT -> eval -> report (no network)")
def _demo(args):
    from posttrain.configs import DemoConfig

    if args and args[0] in ("-h", "--help"):
        _print_options(DemoConfig)
        return 0
    from posttrain.demo import run_demo

    return _run_config_stage(DemoConfig, lambda cfg: run_demo(cfg) and 0, args, "demo")


@stage("doctor", "print versions, optional packages, GPUs and distributed backends")
def _doctor(args):
    from posttrain.doctor import run

    return run(args)


# Stage modules: each defines HELP (one line), CONFIG (a frozen dataclass of component configs)
# and run(cfg) -> dict. Listed here so `posttrain --help` stays fast (modules import on use).
STAGE_MODULES = {
    "sft": "posttrain.trainers.sft",
    "rm": "posttrain.trainers.reward",
    "dpo": "posttrain.trainers.preference",
    "rl": "posttrain.trainers.rl",
    "prm": "posttrain.trainers.prm",
    "eval": "posttrain.eval.harness",
    "search": "posttrain.search.cli",
    "export": "posttrain.export",
    "data": "posttrain.datatools.stage",
}


# Stages whose config lives in the torch-free `posttrain.configs`: `--help` never imports torch.
STAGE_CONFIGS = {"sft": "SFTConfig", "rm": "RewardConfig", "dpo": "PreferenceConfig", "rl": "RLConfig",
                 "prm": "PRMConfig", "eval": "EvalConfig", "search": "SearchConfig", "export": "ExportConfig",
                 "data": "DataToolsConfig"}


def _module_file(mod: str):
    from pathlib import Path

    return Path(__file__).resolve().parent.joinpath(*mod.split(".")[1:]).with_suffix(".py")


def _load_optional_stages() -> None:
    for name, mod in STAGE_MODULES.items():
        if name in STAGES or not _module_file(mod).exists():
            continue

        def runner(args, mod=mod, name=name):
            import importlib

            if name == "data" and args and not args[0].startswith("-"):  # posttrain data dedup ...
                args = ["--cmd", args[0], *args[1:]]

            if args and args[0] in ("-h", "--help"):
                import posttrain.configs as configs

                cls = getattr(configs, STAGE_CONFIGS.get(name, ""), None)
                if cls is not None:
                    _print_options(cls)
                    return 0
            m = importlib.import_module(mod)
            return _run_config_stage(m.CONFIG, lambda cfg: m.run(cfg) is not None and 0, args, name)

        STAGES[name] = (_stage_help(mod), runner)


def _stage_help(mod: str) -> str:
    """The module's HELP line, read from its source without importing it."""
    import ast

    try:
        tree = ast.parse(_module_file(mod).read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "HELP" for t in node.targets):
                return ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError):
        pass
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _load_optional_stages()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: posttrain STAGE [--config FILE.yaml] [--key value ...]\n\nstages:")
        for name, (help, _) in STAGES.items():
            print(f"  {name:<8} {help}")
        print("\n`posttrain STAGE --help` lists a stage's options and defaults.")
        return 0
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv:
        return main(["--help"])
    name, rest = argv[0], argv[1:]
    if name not in STAGES:
        import difflib

        close = difflib.get_close_matches(name, list(STAGES), n=1)
        print(f"posttrain: unknown stage '{name}'" + (f"; did you mean '{close[0]}'?" if close else ""), file=sys.stderr)
        return 2
    where = _rank_label()
    try:
        rc = STAGES[name][1](rest) or 0
        _leave_process_group(clean=rc == 0)
        return rc
    except KeyboardInterrupt:
        print(f"posttrain {name}{where}: interrupted", file=sys.stderr)  # a training loop has said what it saved
        return 130
    except UserError as e:
        if debug:
            traceback.print_exc()
        kind = "config error: " if isinstance(e, ConfigError) else ""
        print(f"posttrain {name}{where}: {kind}{e}" + ("" if debug else "  (--debug shows the traceback)"), file=sys.stderr)
        return 2
    except Exception as e:
        if where:  # under torchrun: name the rank before the traceback, so the first failure is findable
            print(f"posttrain {name}{where}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        raise


def _leave_process_group(clean: bool) -> None:
    """Under torchrun, leave the process group before the interpreter exits: after a clean run, wait
    at a barrier for every rank, then destroy the group. A rank that exited with the gloo group still
    alive, while another rank was still writing its checkpoint, sometimes died in teardown ("terminate
    called without an active exception", SIGABRT: about 1 run in 20 of a 2-rank FSDP2 PPO job), which
    failed a job whose every step and checkpoint had finished. A failed rank skips the barrier (its
    peers may never reach it) and only drops its own handle."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if clean:
        dist.barrier()
    dist.destroy_process_group()


def _rank_label() -> str:
    """`` (rank R of N)`` under torchrun (WORLD_SIZE > 1), else empty."""
    import os

    world = os.environ.get("WORLD_SIZE", "1")
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world not in ("", "1") else ""


if __name__ == "__main__":
    sys.exit(main())
