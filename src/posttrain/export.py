"""`posttrain export`: a checkpoint as a plain Hugging Face model folder, LoRA merged.

    posttrain export --model runs/sft/checkpoints/step-0000300 --out exported/ --merge
    posttrain export --model runs/sft --out exported/          # a run folder: its latest checkpoint

A LoRA checkpoint (adapter + the run's saved base, see `posttrain.models.lora`) is written with the
adapter merged into the base (peft ``merge_and_unload``): config.json, safetensors, tokenizer and
generation config, loadable by ``transformers.AutoModelForCausalLM.from_pretrained(out)`` without
peft or posttrain. ``--merge false`` copies the adapter instead, with its saved base in ``out/base``,
so the copy stands alone. A full fine-tuning checkpoint is copied without its trainer state.
Writing into a non-empty ``--out`` needs ``--overwrite true``; the folder is written under a
temporary name and renamed into place.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.errors import UserError

__all__ = ["ExportConfig", "ExportModel", "ExportOut", "export", "run"]


@dataclass(frozen=True)
class ExportModel:
    name: str = ""  # what to export: a checkpoint folder (LoRA adapter or full model) or a run folder (its latest checkpoint)
    trust_remote_code: bool = False  # allow the base model's own code (only for models that need it)


@dataclass(frozen=True)
class ExportOut:  # named `train` in ExportConfig so that --out means the same on every stage
    out: str = "exported"  # the folder to write (a plain Hugging Face model folder)


@dataclass(frozen=True)
class ExportConfig:
    model: ExportModel = field(default_factory=ExportModel)  # the checkpoint to export
    train: ExportOut = field(default_factory=ExportOut)  # where to write it
    merge: bool = True  # merge a LoRA adapter into its base (false: copy the adapter with its base)
    overwrite: bool = False  # replace a non-empty --out folder


def resolve_source(name: str) -> Path:
    """The checkpoint folder for `name`: itself, or a run folder's latest checkpoint."""
    from posttrain.checkpoint import latest_checkpoint

    if not name:
        raise UserError("--model is required (a checkpoint folder or a run folder)")
    path = Path(name).expanduser()
    if not path.is_dir():
        raise UserError(f"'{name}' is not a folder (pass a checkpoint folder or a run folder)")
    if (path / "checkpoints").is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        ck = latest_checkpoint(path)
        if ck is None:
            raise UserError(f"run folder '{path}' has no complete checkpoint under {path / 'checkpoints'}")
        return ck
    if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
        raise UserError(f"'{path}' is neither a model folder (config.json), a LoRA adapter folder "
                        "(adapter_config.json) nor a run folder (checkpoints/)")
    return path


def _copy_model_folder(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "trainer_state.pt" and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)


def export(src: Path, out: Path, merge: bool = True, overwrite: bool = False, trust_remote_code: bool = False) -> dict:
    """Write checkpoint folder `src` into `out` (see the module docstring); returns what was done."""
    from posttrain.models.lora import copy_adapter_folder, is_adapter_folder, merge_adapter_folder

    src, out = Path(src), Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out '{out}' is not empty; pass --overwrite true to replace it, or another --out")
    s, o = src.resolve(), out.resolve()
    if o == s or o in s.parents or s in o.parents:
        raise UserError(f"--out '{out}' overlaps the checkpoint '{src}'; choose a folder outside it")
    adapter = is_adapter_folder(src)
    o.parent.mkdir(parents=True, exist_ok=True)
    tmp = o.parent / f".tmp-export-{o.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if adapter and merge:
            merge_adapter_folder(src, tmp, trust_remote_code=trust_remote_code)
        elif adapter:
            copy_adapter_folder(src, tmp)
        else:
            _copy_model_folder(src, tmp)
        if o.exists():
            shutil.rmtree(o)
        os.rename(tmp, o)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"source": str(src), "out": str(out), "lora": adapter, "merged": adapter and merge}


HELP = "write a checkpoint (LoRA merged) as a plain Hugging Face model folder"
CONFIG = ExportConfig


def run(cfg: ExportConfig) -> dict:
    from posttrain.logging import console

    src = resolve_source(cfg.model.name)
    result = export(src, Path(cfg.train.out), cfg.merge, cfg.overwrite, cfg.model.trust_remote_code)
    what = "LoRA merged into its base" if result["merged"] else "LoRA adapter with its base" if result["lora"] else "model"
    console.print(f"export: {src} -> {result['out']} ({what})")
    return result
