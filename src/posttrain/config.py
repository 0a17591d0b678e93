"""Frozen dataclass configs per component; YAML files plus --key=value overrides.

A stage config is a dataclass of component dataclasses (model, data, optim, train, ...). Keys are
addressed as ``section.field`` (``optim.lr``); the common flags have short aliases spelled the same
on every stage (``--model``, ``--data``, ``--out``, ``--max-steps``, ``--resume``, ``--lr``, ``--seed``).
A key that does not exist is an error naming it and the closest valid key.

Precedence: the stage's own defaults (each section's ``default_factory``, e.g. ``posttrain rl`` has
lr 1e-5) <- the YAML file <- command-line overrides. A field's trailing ``# comment`` is its
``--help`` line; a ``Literal[...]`` type lists its choices (checked), and ``ranged(...)`` bounds a
number (checked), so a zero batch size or a negative lr is a config error, not a silent no-op.
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
    "env": "rl.env",
}


class ConfigError(UserError, ValueError):
    pass


def ranged(default, *, ge=None, gt=None, le=None):
    """A numeric field with bounds, checked when a config is built: ``lr: float = ranged(1e-3, gt=0)``."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt, "le": le})


def _check_range(value, f: dataclasses.Field, key: str) -> None:
    if value is None or not f.metadata or isinstance(value, bool):
        return
    ge, gt, le = f.metadata.get("ge"), f.metadata.get("gt"), f.metadata.get("le")
    bad = (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le)
    if bad or (isinstance(value, float) and value != value):
        parts = [f">= {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "", f"<= {le}" if le is not None else ""]
        raise ConfigError(f"config key '{key}': {value!r} is out of range (expected {' and '.join(p for p in parts if p)})")


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
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        v = str(value)
        if v not in choices:
            close = difflib.get_close_matches(v, choices, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"config key '{key}': {value!r} is not one of {'|'.join(choices)}{hint}")
        return v
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


def _is_section(cls, dotted: str) -> bool:
    """Whether `dotted` names a section (a nested config) of `cls`, as opposed to a leaf."""
    node = cls
    for part in dotted.split("."):
        f = _fields(node).get(part) if dataclasses.is_dataclass(node) else None
        if f is None:
            return False
        node = _resolve_type(node, f)
    return dataclasses.is_dataclass(node)


def _flatten(d: dict, prefix: str = "", cls=None) -> dict[str, Any]:
    """Nested mapping -> dotted keys; a mapping stays one value where `cls` has a dict-valued field
    (``data.columns``, ``pref.loss_args``), and also for an alias or an unknown key (reported later)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace("-", "_")
        if isinstance(v, dict) and (cls is None or _is_section(cls, key)):
            out.update(_flatten(v, key + ".", cls))
        else:
            out[key] = v
    return out


def build(cls, tree: dict, prefix: str = "", base=None, check: bool = True):
    """`base` (default: ``cls()``, i.e. the stage's own section defaults) with the values of `tree` on
    top. A section keeps its stage default (``field(default_factory=...)``) unless a key overrides it."""
    base = cls() if base is None else base
    kwargs = {}
    for name, f in _fields(cls).items():
        typ = _resolve_type(cls, f)
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(typ):
            kwargs[name] = build(typ, tree.get(name, {}), key + ".", getattr(base, name), check)
        elif name in tree:
            kwargs[name] = _coerce(tree[name], typ, key)
        if check:
            _check_range(kwargs.get(name, getattr(base, name)), f, key)
    return dataclasses.replace(base, **kwargs)


def _resolve_alias(cls, key: str) -> str:
    target = ALIASES.get(key)
    return target if target is not None and target in valid_keys(cls) else key


def read_yaml(path: str | Path) -> dict:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None, base=None):
    """Stage defaults (or `base`) <- YAML file <- overrides (dotted keys or aliases)."""
    tree: dict = {}
    if yaml_path is not None:
        for k, v in _flatten(read_yaml(yaml_path), cls=cls).items():
            _set(tree, _resolve_alias(cls, k), v, cls, f"{k} (in {yaml_path})")
    for k, v in (overrides or {}).items():
        k = k.replace("-", "_")
        _set(tree, _resolve_alias(cls, k), v, cls, k)
    return build(cls, tree, base=base)


def from_dict(cls, tree: dict, where: str = "config"):
    """A config from a nested dict such as ``to_dict`` wrote (keys checked, values coerced; ranges
    are not: a saved config is what a run used, possibly built in Python without the CLI's checks)."""
    flat: dict = {}
    for k, v in _flatten(tree, cls=cls).items():
        _set(flat, k, v, cls, f"{k} (in {where})")
    return build(cls, flat, check=False)


def flat_dict(cfg) -> dict[str, Any]:
    """``{"optim.lr": 1e-3, ...}`` for every leaf of a config (tuples as lists)."""
    out = {}
    for k, v in _flatten(to_dict(cfg), cls=type(cfg)).items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def dump_yaml(cfg) -> str:
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

    return yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)


def field_docs(cls) -> dict[str, str]:
    """Each field's help: its trailing ``# comment``, else the comment lines right above it."""
    import inspect
    import io
    import re
    import tokenize

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, tuple[str, bool]] = {}  # line index -> (text, trailing)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0] - 1] = (tok.string.lstrip("#").strip(), tok.line.strip() != tok.string.strip())
    names = set(_fields(cls))
    docs: dict[str, str] = {}
    for i, line in enumerate(src.splitlines()):
        m = re.match(r"    (\w+)\s*:", line)
        if not m or m.group(1) not in names:
            continue
        if i in comments and comments[i][1]:
            docs[m.group(1)] = comments[i][0]
            continue
        above, j = [], i - 1
        while j in comments and not comments[j][1]:
            above.insert(0, comments[j][0])
            j -= 1
        if above:
            docs[m.group(1)] = " ".join(above)
    return docs


def choices_of(cls, key: str) -> tuple[str, ...]:
    """The allowed values of an enumerated (``Literal``) key, else ()."""
    node = cls
    *parents, leaf = key.split(".")
    for p in parents:
        node = _resolve_type(node, _fields(node)[p])
    typ = _resolve_type(node, _fields(node)[leaf])
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    return typing.get_args(typ) if typing.get_origin(typ) is typing.Literal else ()


def describe_options(cls) -> list[str]:
    """One help line per option: key, default, alias, what it does, and its choices or range."""
    defaults = flat_dict(cls())
    lines = []
    for key in valid_keys(cls):
        *parents, leaf = key.split(".")
        node = cls
        for p in parents:
            node = _resolve_type(node, _fields(node)[p])
        f = _fields(node)[leaf]
        doc = field_docs(node).get(leaf, "")
        choices = choices_of(cls, key)
        if choices and not all(c in doc for c in choices):
            doc = f"{doc} ({'|'.join(choices)})" if doc else "|".join(choices)
        bounds = [f">= {f.metadata['ge']}" if f.metadata.get("ge") is not None else "",
                  f"> {f.metadata['gt']}" if f.metadata.get("gt") is not None else "",
                  f"<= {f.metadata['le']}" if f.metadata.get("le") is not None else ""]
        bounds = " and ".join(b for b in bounds if b)
        if bounds:
            doc = f"{doc} [{bounds}]" if doc else f"[{bounds}]"
        alias = next((a for a, k in ALIASES.items() if k == key), None)
        name = f"--{key}" + (f" (--{alias.replace('_', '-')})" if alias else "")
        lines.append(f"  {name:<40} {defaults[key]!r:<14} {doc}".rstrip())
    return lines


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
