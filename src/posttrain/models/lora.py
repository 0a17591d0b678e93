"""LoRA checkpoints that stay usable: the adapter, where its base is, and a merged export.

A peft model saves only its adapter (``adapter_model.safetensors`` + ``adapter_config.json``). That is
enough only when the base can be re-created from its name. Here:

- a base that a name reloads exactly (a local Hugging Face folder, ``smollm2-135m-instruct``, a hub
  name) is recorded by that name (a folder by its absolute path);
- any other base is saved once per run into ``RUN/base`` (Hugging Face format, plus the tokenizer when
  known) and recorded *relative to the adapter folder* (``../../base`` from
  ``RUN/checkpoints/step-N``), so the run folder can move. That covers the from-config ``tiny-*``
  models (random init: the weights depend on the seed the trainer passed, which eval's default does
  not repeat, and on torch's init code, which changes between versions), a base merged from another
  LoRA checkpoint (that checkpoint may be pruned), and a model built in code (a reward model's head).
  A second, different base in the same run folder goes to ``RUN/base-<fingerprint>``.

The record is ``base_model_name_or_path`` in ``adapter_config.json`` (what peft reads) and
``posttrain_adapter.json`` beside it: the original base name, the recorded path, whether the base was
saved, the seed. `load_adapter_folder` (used by `load_model_and_tokenizer` for any folder with an
``adapter_config.json``) loads the base, applies the adapter and merges it; `merge_adapter_folder`
writes that as a plain Hugging Face folder that transformers loads without peft.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_META = "posttrain_adapter.json"
BASE_META = "posttrain_base.json"
_SKIP_ON_COPY = {"trainer_state.pt"}


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def is_adapter_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG).exists()


def save_model(model, folder: Path, run_dir: Path | None = None, tokenizer=None) -> None:
    """Write `model` into `folder` the way a checkpoint keeps it.

    A plain model: ``save_pretrained``. A peft model: its adapter, plus the base it needs (see the
    module docstring) saved once into ``run_dir / "base"`` (``folder / "base"`` without a run folder),
    recorded relative to `folder`. `tokenizer` (else the one the base was loaded with) goes with a
    saved base, so ``RUN/base`` also loads on its own."""
    folder = Path(folder)
    model.save_pretrained(folder)
    if not is_peft_model(model):
        return
    from posttrain.models.loading import model_source

    src = model_source(model)
    if src is not None and src.reloadable:
        ref, saved = src.name, False
    else:
        tok = tokenizer if tokenizer is not None else (src.tokenizer if src is not None else None)
        base_dir = save_base(model, Path(run_dir) if run_dir is not None else folder, tok)
        ref, saved = os.path.relpath(base_dir, folder), True
    base = model.get_base_model()
    original = src.name if src is not None else (getattr(base.config, "_name_or_path", "") or "")
    cfg_path = folder / ADAPTER_CONFIG
    conf = json.loads(cfg_path.read_text())
    conf["base_model_name_or_path"] = ref
    cfg_path.write_text(json.dumps(conf, indent=2, sort_keys=True))
    meta = {"base_model": original, "base_path": ref, "base_saved": saved,
            "base_seed": src.seed if src is not None else None,
            "base_architectures": list(getattr(base.config, "architectures", None) or [type(base).__name__])}
    (folder / ADAPTER_META).write_text(json.dumps(meta, indent=1))


def _base_state(peft_model) -> dict[str, torch.Tensor]:
    """The base model's own weights under their plain names (LoRA layers and saved copies left out)."""
    out = {}
    for k, v in peft_model.get_base_model().state_dict().items():
        if ".lora_" in k or ".modules_to_save." in k:
            continue
        out[k.replace(".base_layer.", ".").replace(".original_module.", ".")] = v
    return out


def _fingerprint(peft_model, state: dict[str, torch.Tensor]) -> str:
    """sha256 of the base weights and config; cached on the model (LoRA keeps the base frozen)."""
    cached = getattr(peft_model, "_posttrain_base_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    conf = {k: v for k, v in peft_model.get_base_model().config.to_dict().items()
            if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype", "architectures")}
    h.update(json.dumps(conf, sort_keys=True, default=str).encode())
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    fp = h.hexdigest()
    peft_model._posttrain_base_fingerprint = fp
    return fp


def save_base(peft_model, root: Path, tokenizer=None) -> Path:
    """Save the base of `peft_model` as ``root/base`` once (atomically) and return that folder; an
    existing ``base`` with other weights is kept and this base goes to ``root/base-<fingerprint>``."""
    from posttrain.models.loading import model_source

    root = Path(root)
    src = model_source(peft_model)
    state = _base_state(peft_model)
    fp = _fingerprint(peft_model, state)
    for cand in (root / "base", root / f"base-{fp[:12]}"):
        meta = cand / BASE_META
        if meta.exists() and json.loads(meta.read_text()).get("fingerprint") == fp:
            return cand
        if cand.exists():
            continue
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{cand.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        peft_model.get_base_model().save_pretrained(tmp, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / BASE_META).write_text(json.dumps({"fingerprint": fp, "base_model": src.name if src else "",
                                                 "seed": src.seed if src else None}, indent=1))
        from posttrain.checkpoint import fsync_tree

        fsync_tree(tmp)
        try:
            os.rename(tmp, cand)
        except OSError:  # written meanwhile by another process
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        return cand
    raise RuntimeError(f"{root}: cannot save the LoRA base model (base and base-{fp[:12]} both taken)")


def _read_json(path: Path) -> dict:
    from posttrain.models.loading import ModelLoadError

    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read ({e})") from None


def base_location(adapter_dir: Path) -> tuple[Path | str, dict]:
    """Where the adapter's base is: a folder (a recorded path resolved relative to `adapter_dir`, or
    an absolute one) or a name, and the posttrain record (empty for a foreign adapter)."""
    from posttrain.models.loading import ModelLoadError

    adapter_dir = Path(adapter_dir)
    conf = _read_json(adapter_dir / ADAPTER_CONFIG)
    meta = _read_json(adapter_dir / ADAPTER_META) if (adapter_dir / ADAPTER_META).exists() else {}
    recorded = conf.get("base_model_name_or_path") or meta.get("base_path") or meta.get("base_model")
    if not recorded:
        raise ModelLoadError(f"LoRA adapter folder '{adapter_dir}': {ADAPTER_CONFIG} records no base model "
                             "(base_model_name_or_path); set it to the base model's folder or name")
    p = Path(recorded).expanduser()
    p = p if p.is_absolute() else Path(os.path.normpath(adapter_dir / p))  # ../../base -> RUN/base
    if meta.get("base_saved") or p.exists():
        return p, meta
    return recorded, meta


def _load_base_folder(path: Path, *, trust_remote_code: bool, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from posttrain.models import attention

    conf = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    arch = (getattr(conf, "architectures", None) or [""])[0]
    cls = AutoModelForSequenceClassification if arch.endswith("ForSequenceClassification") else AutoModelForCausalLM
    return cls.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=dtype,
                               attn_implementation=attention.register())


def load_adapter_folder(adapter_dir: str | Path, *, trust_remote_code: bool = False, dtype=torch.float32, seed: int = 0):
    """(plain model with the adapter merged, tokenizer) from a LoRA adapter folder.

    The tokenizer is the adapter folder's own (a checkpoint saves it), else the base's."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from posttrain.models.loading import ModelLoadError, ModelSource, finish_loaded, load_model_and_tokenizer, tag_model

    adapter_dir = Path(adapter_dir)
    where, meta = base_location(adapter_dir)
    base_tok = None
    try:
        if isinstance(where, Path):
            if not (where / "config.json").exists():
                raise FileNotFoundError(f"no config.json in {where}" if where.exists() else f"{where} does not exist")
            base = _load_base_folder(where, trust_remote_code=trust_remote_code, dtype=dtype)
        else:
            base_seed = meta.get("base_seed")
            base, base_tok = load_model_and_tokenizer(where, trust_remote_code=trust_remote_code, dtype=dtype,
                                                      seed=seed if base_seed is None else base_seed)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise ModelLoadError(
            f"LoRA adapter folder '{adapter_dir}': cannot load its base model from '{where}' ({why[:300]}). "
            f"A run's base/ folder must stay beside its checkpoints/ (move the run folder as a whole); "
            f"otherwise set base_model_name_or_path in {adapter_dir / ADAPTER_CONFIG} to the base model, "
            f"or use a merged export (posttrain export --merge)") from None
    if any(f.name.startswith("tokenizer") for f in adapter_dir.iterdir()):
        tok = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    elif base_tok is not None:
        tok = base_tok
    else:
        try:
            tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"LoRA adapter folder '{adapter_dir}': no tokenizer in it nor in its base "
                                 f"'{where}' ({' '.join(str(e).split())[:200]})") from None
    try:
        model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(f"LoRA adapter folder '{adapter_dir}': the adapter does not fit its base "
                             f"'{where}' ({' '.join(str(e).split())[:300]})") from None
    model.requires_grad_(True)  # peft froze the base; a merged model trains like any loaded one
    model.config._name_or_path = str(adapter_dir)
    tag_model(model, ModelSource(str(adapter_dir.resolve()), reloadable=False, seed=None, tokenizer=tok))
    return finish_loaded(model, tok)


def merge_adapter_folder(adapter_dir: str | Path, out_dir: str | Path, *, trust_remote_code: bool = False) -> Path:
    """Write `adapter_dir` with its LoRA merged into the base as a plain Hugging Face folder
    (config.json, safetensors, tokenizer, generation config) that transformers loads without peft."""
    model, tok = load_adapter_folder(adapter_dir, trust_remote_code=trust_remote_code)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def copy_adapter_folder(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy the adapter (no trainer state) into `out_dir`; a saved base goes along into
    ``out_dir/base`` and is recorded as ``base``, so the copy stands alone."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    where, meta = base_location(adapter_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in adapter_dir.iterdir():
        if f.is_file() and f.name not in _SKIP_ON_COPY:
            shutil.copy2(f, out_dir / f.name)
    if isinstance(where, Path) and meta.get("base_saved"):
        if not (where / "config.json").exists():
            from posttrain.models.loading import ModelLoadError

            raise ModelLoadError(f"LoRA adapter folder '{adapter_dir}': its saved base '{where}' is missing")
        shutil.copytree(where, out_dir / "base")
        conf = json.loads((out_dir / ADAPTER_CONFIG).read_text())
        conf["base_model_name_or_path"] = "base"
        (out_dir / ADAPTER_CONFIG).write_text(json.dumps(conf, indent=2, sort_keys=True))
        (out_dir / ADAPTER_META).write_text(json.dumps({**meta, "base_path": "base"}, indent=1))
    return out_dir
