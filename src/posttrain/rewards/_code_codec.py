"""Plain values <-> JSON, exact builtin types only. Self-contained: its source is also pasted into the
sandboxed harness programs, so it imports only the C module _json (``import json`` pulls in ``re``,
milliseconds of every run).

encode(x) accepts None, bool, int, float, str, bytes, complex, list, tuple, dict, set, frozenset
(checked with ``type(x) is ...``: subclasses, and so objects with a custom ``__eq__``, are refused
with TypeError), at most MAX_DEPTH deep and MAX_NODES values. decode() builds only those types back.
JSON scalars stand for themselves (bool, int, float incl. NaN/Infinity, str, null); lists are JSON
arrays; everything else is a one-key object: {"tuple": [...]}, {"dict": [[k, v], ...]}, {"set": [...]},
{"frozenset": [...]}, {"bytes": "hex"}, {"complex": [re, im]}.

to_json(j) writes an encoded value as json.dumps would; to_literal(j) as a Python literal expression
(how the parent embeds data in a harness program: ``str.__repr__``/``int.__repr__`` and a fixed spelling
of non-finite floats, so no data can become code).
"""
from _json import encode_basestring_ascii as _quote

MAX_DEPTH = 100
MAX_NODES = 1_000_000


def encode(x):
    count = [0]

    def enc(v, depth):
        count[0] += 1
        if depth > MAX_DEPTH or count[0] > MAX_NODES:
            raise ValueError("value too deep or too large to send")
        t = type(v)
        if v is None or t is bool or t is int or t is float or t is str:
            return v
        if t is list:
            return [enc(e, depth + 1) for e in v]
        if t is tuple:
            return {"tuple": [enc(e, depth + 1) for e in v]}
        if t is dict:
            return {"dict": [[enc(k, depth + 1), enc(e, depth + 1)] for k, e in v.items()]}
        if t is set or t is frozenset:
            return {t.__name__: [enc(e, depth + 1) for e in v]}
        if t is bytes:
            return {"bytes": v.hex()}
        if t is complex:
            return {"complex": [v.real, v.imag]}
        raise TypeError(f"a value of type {t.__name__} cannot be sent (only plain builtin values)")

    return enc(x, 0)


def decode(j):
    def dec(v, depth):
        if depth > MAX_DEPTH:
            raise ValueError("value too deep")
        t = type(v)
        if v is None or t is bool or t is int or t is float or t is str:
            return v
        if t is list:
            return [dec(e, depth + 1) for e in v]
        if t is dict and len(v) == 1:
            (tag, body), = v.items()
            if tag == "tuple" and type(body) is list:
                return tuple(dec(e, depth + 1) for e in body)
            if tag == "dict" and type(body) is list:
                return {dec(p[0], depth + 1): dec(p[1], depth + 1) for p in body if type(p) is list and len(p) == 2}
            if tag in ("set", "frozenset") and type(body) is list:
                return (set if tag == "set" else frozenset)(dec(e, depth + 1) for e in body)
            if tag == "bytes" and type(body) is str:
                return bytes.fromhex(body)
            if tag == "complex" and type(body) is list and len(body) == 2:
                return complex(float(body[0]), float(body[1]))
        raise ValueError(f"not an encoded value: {str(v)[:80]}")

    return dec(j, 0)


_NONFINITE = {"inf": ("Infinity", "float('inf')"), "-inf": ("-Infinity", "-float('inf')"), "nan": ("NaN", "float('nan')")}


def _write(j, as_literal: bool) -> str:
    t = type(j)
    if j is None:
        return "None" if as_literal else "null"
    if t is bool:
        return repr(j) if as_literal else ("true" if j else "false")
    if t is int:
        return int.__repr__(j)
    if t is float:
        r = float.__repr__(j)
        return _NONFINITE[r][as_literal] if r in _NONFINITE else r
    if t is str:
        return str.__repr__(j) if as_literal else _quote(j)
    if t is list:
        return "[" + ", ".join(_write(e, as_literal) for e in j) + "]"
    if t is dict:
        return "{" + ", ".join(_write(k, as_literal) + ": " + _write(v, as_literal) for k, v in j.items()
                               if type(k) is str) + "}"
    raise TypeError(f"not an encoded value: {t.__name__}")


def to_json(j) -> str:
    return _write(j, False)


def to_literal(j) -> str:
    return _write(j, True)
