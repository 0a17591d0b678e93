"""Frozen dataclass configs per component; YAML files plus --key=value overrides.

A stage config is a dataclass of component dataclasses (model, data, optim, train, ...). Keys are
addressed as ``section.field`` (``optim.lr``); the common flags have short aliases spelled the same
on every stage (``--model``, ``--data``, ``--out``, ``--max-steps``, ``--resume``, ``--lr``, ``--seed``).
A key that does not exist is an error naming it and the closest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import UserError

ALIASES = {
    "model": "model.name",
    "data": "data.path",
    "eval_data": "data.eval_path",
    "out": "train.out",
    "max_steps": "train.max_steps",
    "resume": "train.resume",
    "lr": "optim.lr",
    "seed": "train.seed",
    "lora": "model.lora_rank",
}


class ConfigError(UserError, ValueError):
    pass


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def valid_keys(cls) -> list[str]:
    keys = []
    for name, f in _fields(cls).items():
        sub = _resolve_type(cls, f)
        if dataclasses.is_dataclass(sub):
            keys += [f"{name}.{k}" for k in valid_keys(sub)]
        else:
            keys.append(name)
    return keys


def _resolve_type(cls, f):
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def _coerce(value: Any, typ, key: str):
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if typ in (int, float):
        try:
            v = typ(float(value)) if typ is int and isinstance(value, str) and "e" in value.lower() else typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}") from None
        return v
    if typ is str:
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        (inner, *_) = typing.get_args(typ) or (str,)
        seq = [_coerce(v, inner, key) for v in value]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if isinstance(value, str):
            value = dict(kv.split("=", 1) for kv in value.split(",") if kv)
        return dict(value)
    return value


def _set(tree: dict, dotted: str, value, cls, original: str) -> None:
    keys = valid_keys(cls)
    if dotted not in keys:
        close = difflib.get_close_matches(dotted, keys + list(ALIASES), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key '{original}'{hint}")
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace("-", "_")
        if isinstance(v, dict) and not key.endswith(("columns", "reward_weights", "losses")):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def build(cls, tree: dict, prefix: str = ""):
    kwargs = {}
    for name, f in _fields(cls).items():
        typ = _resolve_type(cls, f)
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(typ):
            kwargs[name] = build(typ, tree.get(name, {}), key + ".")
        elif name in tree:
            kwargs[name] = _coerce(tree[name], typ, key)
    return cls(**kwargs)


def _resolve_alias(cls, key: str) -> str:
    target = ALIASES.get(key)
    return target if target is not None and target in valid_keys(cls) else key


def load_config(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Defaults <- YAML file <- overrides (dotted keys or aliases)."""
    tree: dict = {}
    if yaml_path is not None:
        with open(yaml_path) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping at the top level")
        for k, v in _flatten(raw).items():
            _set(tree, _resolve_alias(cls, k), v, cls, f"{k} (in {yaml_path})")
    for k, v in (overrides or {}).items():
        k = k.replace("-", "_")
        _set(tree, _resolve_alias(cls, k), v, cls, k)
    return build(cls, tree)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """['--lr', '1e-4', '--optim.warmup_steps=5', '--resume'] -> {'lr': '1e-4', ...}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument '{a}' (options look like --key value or --key=value)")
        key = a[2:]
        if "=" in key:
            key, val = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            val = args[i + 1]
            i += 1
        else:
            val = "true"
        out[key] = val
        i += 1
    return out
